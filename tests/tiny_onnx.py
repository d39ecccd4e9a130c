"""A tiny ONNX classifier that honours the serving contract, for hermetic serving tests.

    python -c "from tests.tiny_onnx import write_tiny_model; write_tiny_model('tiny.onnx')"

Input `input` float32 `(N, 3, 32, 32)`, output logits `(N, 10)`: global average pooling of
the three normalised channels followed by a fixed linear layer, so pure red, green and blue
images land on different classes and every probability depends on the pixels. Built with
`onnx.helper` in milliseconds; no torch and no trained weights needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cifarlab.constants import NUM_CLASSES


def write_tiny_model(path: Path | str, *, name: str = "tiny-test", cam: bool = False) -> Path:
    """With `cam`, a second output `cam` `(N, 10, 8, 8)`: the same linear layer applied to
    4x4-pixel averages, i.e. each class's evidence per image region (like fastnet's)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.5, (3, NUM_CLASSES)).astype(np.float32)  # (channels, classes)
    weight[0, 1] += 3.0  # red -> automobile
    weight[1, 2] += 3.0  # green -> bird
    weight[2, 8] += 3.0  # blue -> ship
    bias = rng.normal(0, 0.1, NUM_CLASSES).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),  # (N, 3, 1, 1)
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),  # (N, 3)
        helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"]),  # (N, 10)
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])]
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    if cam:
        kernel = weight.T.reshape(NUM_CLASSES, 3, 1, 1).copy()
        nodes += [
            helper.make_node(
                "AveragePool", ["input"], ["grid"], kernel_shape=[4, 4], strides=[4, 4]
            ),
            helper.make_node("Conv", ["grid", "cam_weight"], ["cam"]),  # (N, 10, 8, 8)
        ]
        outputs.append(
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", NUM_CLASSES, 8, 8])
        )
        inits.append(numpy_helper.from_array(kernel, "cam_weight"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    helper.set_model_props(model, {"cifarlab.name": json.dumps(name)})
    onnx.checker.check_model(model)
    out = Path(path)
    onnx.save(model, out)
    return out
