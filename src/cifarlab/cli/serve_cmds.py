"""`cifarlab export`, `cifarlab serve` and `cifarlab predict`: from a trained run to answers.

    cifarlab export runs/fast94 --out src/cifarlab/serve/models/default.onnx --tta
    cifarlab serve --host 127.0.0.1 --port 8000 [--model PATH.onnx]
    cifarlab predict cat.jpg dog.png [--model PATH.onnx] [--json]

`serve` and `predict` import no torch: only onnxruntime, numpy, Pillow and the web stack.
Options left out come from `CIFARLAB_*` environment variables, then the defaults of
`cifarlab.serve.settings.Settings`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError


def register(sub: Any) -> None:
    _add_export(sub)
    _add_serve(sub)
    _add_predict(sub)


# ---- export ----------------------------------------------------------------------------


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a training run to ONNX (with metadata and a parity check)",
        description=(
            "Export checkpoint --which of RUN to ONNX with a dynamic batch axis, metadata "
            "(classes, mean/std, model name, test accuracy, training command) and a side-car "
            "JSON beside it. The export is compared with PyTorch on the first "
            "--parity-images test images and nothing is written if they disagree."
        ),
    )
    p.add_argument("run", type=Path, help="run folder, e.g. runs/fast94")
    p.add_argument("--out", type=Path, required=True, help="output .onnx path")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint")
    p.add_argument(
        "--tta", action="store_true", help="average the logits of the image and its mirror"
    )
    p.add_argument(
        "--parity-images",
        type=int,
        default=1000,
        metavar="N",
        help="test images for the PyTorch parity check (0 skips it; default 1000)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="prepared data cache")
    p.add_argument(
        "--temperature",
        default=None,
        metavar="auto|T",
        help="divide the graph's logits by T ('auto': the run's held-out fit); default none",
    )
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from cifarlab.export import export_run

    result = export_run(
        args.run,
        args.out,
        which=args.which,
        tta=args.tta,
        parity_images=args.parity_images,
        cache_dir=args.cache_dir,
        temperature=args.temperature,
    )
    info = result.info
    acc = "unknown" if info.test_accuracy is None else f"{info.test_accuracy:.4f}"
    print(f"wrote {result.onnx_path} ({info.name}, tta={info.tta}, test accuracy {acc})")
    print(f"wrote {result.sidecar_path} (sha256 {info.sha256})")
    if result.parity is None and args.parity_images <= 0:
        print("parity check skipped (--parity-images 0)")
    elif result.parity is None:
        print("parity check skipped (no prepared test split; run `cifarlab data prepare`)")
    else:
        p = result.parity
        print(
            f"parity on {p.n_images} test images: max |logit diff| {p.max_abs_diff:.2e}, "
            f"top-1 agreement {p.top1_agreement:.2%}"
        )
    return 0


# ---- serve -----------------------------------------------------------------------------


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (API, /ui web page, /docs, /metrics)",
        description=(
            "Serve an ONNX model (default: the bundled one) with FastAPI and uvicorn. Every "
            "option can also be set with an environment variable (CIFARLAB_HOST, "
            "CIFARLAB_PORT, CIFARLAB_MODEL_PATH, CIFARLAB_MAX_FILE_BYTES, CIFARLAB_MAX_PIXELS, "
            "CIFARLAB_MAX_BATCH_FILES, CIFARLAB_MAX_BATCH_SIZE, CIFARLAB_MAX_WAIT_MS, "
            "CIFARLAB_ORT_THREADS); flags win over the environment."
        ),
    )
    p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--model", type=Path, default=None, dest="model_path", help=".onnx file")
    p.add_argument(
        "--max-batch-size", type=int, default=None, help="images per ONNX Runtime call (32)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=None,
        help="longest wait for a batch to fill, only while requests keep arriving (2)",
    )
    p.add_argument("--threads", type=int, default=None, dest="ort_threads", help="ORT threads")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from cifarlab.serve.app import create_app
    from cifarlab.serve.memory import bound_malloc
    from cifarlab.serve.predictor import Predictor
    from cifarlab.serve.settings import Settings

    fields = ("host", "port", "model_path", "max_batch_size", "max_wait_ms", "ort_threads")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise CifarlabError(
            f"invalid serving settings ({problems}); fix the flag or the CIFARLAB_* variable"
        ) from None
    # Load once here so that a bad model fails with one clear line before the port opens.
    bound_malloc()  # before the first large buffer: see cifarlab.serve.memory
    predictor = Predictor(settings.model_path, threads=settings.ort_threads)
    app = create_app(settings, predictor=predictor)
    # The event loop thread is busy under load; with Python's default 5 ms GIL switch
    # interval, the inference and decode threads would wait up to that long for the GIL each
    # time they hand a result back. This process is ours, so shorten it.
    sys.setswitchinterval(0.001)
    logging.getLogger(__name__).info(
        "http://%s:%d/ui  (API docs: /docs)", settings.host, settings.port
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=args.access_log,
        log_level="info",
        # One process: the micro-batcher needs every request in the same queue, and ONNX
        # Runtime already uses all cores inside each call.
        workers=1,
    )
    return 0


# ---- predict ---------------------------------------------------------------------------


def _add_predict(sub: Any) -> None:
    from cifarlab.serve.imaging import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "predict",
        help="classify image files with an ONNX model (the same path as the API)",
        description=(
            "Classify IMAGE files (PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF) with the bundled "
            "model or --model. Each file is decoded exactly as /predict decodes an upload "
            "(EXIF orientation, any mode to RGB, centre crop to a square, 32x32), so the CLI "
            "and the API give the same answer. Unreadable files are reported and the others "
            "still classified; the exit status is then 2."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument("--model", type=Path, default=None, help=".onnx file (default: bundled)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--top", type=int, default=3, help="classes listed per file (default 3)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images larger than this (width x height; default {DEFAULT_MAX_PIXELS:,})",
    )
    p.set_defaults(func=_predict)


def _read_image(path: Path, max_pixels: int) -> Any:
    """The decoded (32, 32, 3) image, or the one-line reason it cannot be used."""
    from cifarlab.serve.imaging import ImageError, load_image

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"{path}: file not found; check the path"
    except OSError as exc:
        return f"{path}: cannot read it ({exc.strerror or exc}); check the path"
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        return f"{path}: {exc}"


def _predict(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from cifarlab.serve.predictor import Predictor

    predictor = Predictor.load(args.model)
    decoded = [_read_image(path, args.max_pixels) for path in args.images]
    images = [d for d in decoded if not isinstance(d, str)]
    # One ONNX Runtime call for all readable files, as /predict/batch does.
    predictions = iter(predictor.predict_arrays(np.stack(images)) if images else [])

    results: list[dict[str, Any]] = []
    for path, item in zip(args.images, decoded, strict=True):
        entry: dict[str, Any] = {"filename": path.name, "path": str(path)}
        if isinstance(item, str):
            entry["error"] = item
            print(f"error: {item}", file=sys.stderr)
        else:
            pred = next(predictions)
            entry.update(
                predicted_class=pred.predicted_class,
                confidence=pred.confidence,
                probabilities=pred.probabilities,
            )
        results.append(entry)

    info = predictor.info
    if args.json:
        body = {"model": info.name, "model_version": info.version, "results": results}
        print(json.dumps(body, indent=2))
    else:
        for entry in results:
            if "error" in entry:
                continue
            ranked = sorted(entry["probabilities"].items(), key=lambda kv: -kv[1])
            others = ", ".join(f"{c} {p:.1%}" for c, p in ranked[1 : max(args.top, 1)])
            line = f"{entry['path']}: {entry['predicted_class']} {entry['confidence']:.1%}"
            print(f"{line}  ({others})" if others else line)
    return 2 if any("error" in e for e in results) else 0
