"""Facts about the machine and the checkout, recorded beside every result (no torch needed).

    python -c "from cifarlab.runinfo import hardware; print(hardware())"

Run folders (`env.json`), evaluations, the report and the benchmarks under `bench/` all call
these, so a result file always names its hardware the same way.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


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
    """CPU model, core count and the vector extensions that decide fp32/bf16 speed."""
    name, flags = _cpuinfo()
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def hardware_line() -> str:
    """One line naming the CPU and core count (for reports)."""
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}"


def git_sha() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
