"""Provenance: how a result was made, recorded beside every result (no torch import).

    python -c "import json, cifarlab.runinfo as r; print(json.dumps(r.provenance(), indent=2))"

Every JSON result under `reports/` (benchmarks, `eda.json`, `results.json`, run folders'
`env.json`) carries one `provenance` block in one format:

    {"command": "python bench/ort_spin.py --calls 200",  # as run, paths made relative
     "git": {"commit": "03cb540...", "dirty": false},     # dirty: see git_state()
     "date": "2026-12-01T08:40:00+00:00",                 # UTC, ISO 8601, seconds
     "hardware": {"cpu": "...", "cores": 2, "platform": "...",
                  "avx2": true, "avx512f": true, "avx512_bf16": true, "amx_bf16": true,
                  "vnni": true},
     "versions": {"python": "3.11.9", "cifarlab": "0.1.0", "numpy": "...",
                  "torch": "..." or null, "onnxruntime": "..." or null}}

The API is two calls:

- `provenance(command=None)`: the block above. `command` defaults to this process's
  `sys.argv` (a script becomes `python bench/x.py ...`, a console script `cifarlab ...`).
- `write_result(path, data, command=None)`: writes `{**data, "provenance": provenance()}`
  through the project's one atomic writer (`cifarlab.io.write_json_atomic`) and returns it.

Library versions are read from the installed distributions' metadata, so nothing here imports
torch or onnxruntime (the serving image has no torch). Absolute paths inside the repository
are written relative to it, and paths beside it as `../...`, so a result file never names
the machine's own directories. `hardware()`, `hardware_line()` and `git_sha()` are the pieces.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cifarlab.io import write_json_atomic

REPO = Path(__file__).resolve().parents[2]
# Distributions whose versions decide a result; a missing one is recorded as null.
LIBRARIES = ("numpy", "torch", "torchvision", "onnxruntime")
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # int8 dot products, as /proc/cpuinfo names them


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: keep what platform knows
        pass
    return name, flags


def cpu_name() -> str:
    return _cpuinfo()[0]


def hardware() -> dict[str, Any]:
    """CPU model, logical core count and the vector extensions that decide fp32/bf16 speed.

    `vnni` is true for AVX512-VNNI or AVX-VNNI (int8 dot products)."""
    name, flags = _cpuinfo()
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "vnni": any(f in flags for f in _VNNI_FLAGS),
    }


def hardware_line(hw: dict[str, Any] | None = None) -> str:
    """One line naming the CPU, core count and bf16 support (for prose)."""
    hw = hw or hardware()
    bf16 = [k for k in ("avx512_bf16", "amx_bf16") if hw.get(k)]
    simd = "AVX-512" if hw.get("avx512f") else "AVX2" if hw.get("avx2") else "no AVX2"
    native = ("native bf16: " + ", ".join(bf16)) if bf16 else "no native bf16"
    return f"{hw['cpu']}, {hw['cores']} logical CPUs, {simd}, {native}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=REPO, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_sha() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out else None


def git_state() -> dict[str, Any]:
    """`{"commit", "dirty"}`: dirty when tracked files that can change a result differ from HEAD.

    Results under `reports/` (outputs of earlier runs) and markdown prose don't count; code,
    configs, scripts and the bundled model do. Outside a git checkout both are None."""
    commit = git_sha()
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports", ":!*.md")
    dirty = None if commit is None or status is None else bool(status.strip())
    return {"commit": commit, "dirty": dirty}


def versions() -> dict[str, str | None]:
    """Python, cifarlab and `LIBRARIES` versions, from metadata (imports none of them)."""
    from cifarlab import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "cifarlab": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _relative(arg: str) -> str:
    """`arg` with an absolute path in or beside the repo made relative (`../shared/x`)."""
    for prefix, repl in ((str(REPO), "."), (str(REPO.parent), "..")):
        if arg.startswith(prefix + os.sep) or arg == prefix:
            return repl + arg[len(prefix) :]
        if f"={prefix}{os.sep}" in arg:  # --flag=/abs/path
            return arg.replace(f"={prefix}", f"={repl}", 1)
    return arg


def command_line(argv: list[str] | None = None) -> str:
    """The command as run: `python script.py ...`, `python -m cifarlab ...` or `cifarlab ...`."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = argv[0]
    if head == "-c":  # python -c "..."
        first = ["python", "-c"]
    elif head.endswith(".py"):
        if Path(head).name == "__main__.py":  # python -m pkg
            first = ["python", "-m", Path(head).parent.name]
        else:
            first = ["python", _relative(head)]
    else:
        first = [Path(head).name]  # console script: its name, not where it is installed
    return shlex.join([*first, *(_relative(a) for a in argv[1:])])


def provenance(command: str | list[str] | None = None) -> dict[str, Any]:
    """The provenance block (see the module docstring); `command` overrides `sys.argv`."""
    return {
        "command": command if isinstance(command, str) else command_line(command),
        "git": git_state(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "versions": versions(),
    }


def write_result(
    path: str | os.PathLike[str], data: dict[str, Any], command: str | list[str] | None = None
) -> dict[str, Any]:
    """Write `data` plus its `provenance` block to `path` atomically; return what was written."""
    if "provenance" in data:
        raise ValueError("data already has a 'provenance' key; write_result adds it")
    result = {**data, "provenance": provenance(command)}
    write_json_atomic(Path(path), result)
    return result
