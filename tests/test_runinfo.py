"""Provenance block: one format, relative paths, atomic write, importable without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cifarlab import runinfo


def test_runinfo_imports_without_torch_or_onnxruntime() -> None:
    code = (
        "import sys, cifarlab.runinfo as r; r.provenance(); "
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_provenance_has_every_field_in_one_format() -> None:
    block = runinfo.provenance(["bench/x.py", "--repeats", "3"])
    assert set(block) == {"command", "git", "date", "hardware", "versions"}
    assert block["command"] == "python bench/x.py --repeats 3"
    assert block["date"].endswith("+00:00")
    assert set(block["git"]) == {"commit", "dirty"}
    hw = block["hardware"]
    for flag in ("avx2", "avx512_bf16", "amx_bf16", "vnni"):
        assert isinstance(hw[flag], bool), flag
    assert isinstance(hw["cores"], int) and hw["cores"] >= 1
    assert {"python", "numpy", "torch", "onnxruntime"} <= set(block["versions"])
    assert block["versions"]["numpy"] == __import__("numpy").__version__


def test_command_line_writes_machine_paths_relative_to_the_repo() -> None:
    repo, beside = runinfo.REPO, runinfo.REPO.parent
    argv = [
        str(repo / "bench" / "serve_load.py"),
        "--weights",
        str(beside / "shared" / "weights" / "w.pth"),
        f"--out={repo / 'reports' / 'x.json'}",
        "two words",
    ]
    line = runinfo.command_line(argv)
    assert line == (
        "python ./bench/serve_load.py --weights ../shared/weights/w.pth "
        "--out=./reports/x.json 'two words'"
    )
    assert str(beside) not in line
    assert runinfo.command_line(["/some/venv/bin/cifarlab", "eda"]) == "cifarlab eda"
    main = str(Path(runinfo.__file__).parent / "__main__.py")
    assert runinfo.command_line([main, "train"]) == "python -m cifarlab train"


def test_write_result_adds_provenance_atomically(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "r.json"
    written = runinfo.write_result(out, {"value": 1.5}, command="python bench/r.py")
    on_disk = json.loads(out.read_text())
    assert on_disk == written
    assert on_disk["value"] == 1.5
    assert on_disk["provenance"]["command"] == "python bench/r.py"
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temp file left
    with pytest.raises(ValueError, match="provenance"):
        runinfo.write_result(out, on_disk)


def test_git_state_names_the_checkout_commit() -> None:
    state = runinfo.git_state()
    if state["commit"] is None:
        pytest.skip("not a git checkout")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=runinfo.REPO
    ).stdout.strip()
    assert state["commit"] == head
    assert isinstance(state["dirty"], bool)


def test_hardware_line_names_bf16_support() -> None:
    hw = {"cpu": "X", "cores": 2, "avx2": True, "avx512f": False}
    assert runinfo.hardware_line({**hw, "avx512_bf16": False, "amx_bf16": False}) == (
        "X, 2 logical CPUs, AVX2, no native bf16"
    )
    amx = {**hw, "avx512f": True, "avx512_bf16": True, "amx_bf16": True}
    assert runinfo.hardware_line(amx).endswith("AVX-512, native bf16: avx512_bf16, amx_bf16")
