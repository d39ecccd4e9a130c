"""Robustness of a model to CIFAR-10-C corruptions and to JPEG re-encoding.

    cifarlab robustness src/cifarlab/serve/models/default.onnx --label bundled
    cifarlab robustness runs/robust94-s0 --tta --subset 2000

The target is an exported `.onnx` file or a run folder (exported to a temporary ONNX file
first); inference goes through ONNX Runtime via the serving `Predictor`, in batches, so the
numbers are those of the graph that is (or would be) served. Measured on the official test
set, or on a fixed stratified subset of it (`--subset N`, same images for every model):

- clean accuracy and ECE (15 bins, of the graph's probabilities);
- JPEG sweep: accuracy and ECE on Pillow re-encodings at each quality in `JPEG_QUALITIES`;
- the 15 corruptions x 5 severities of `cifarlab.corruptions` (CIFAR-10-C's parameters):
  accuracy per cell and the mean corruption accuracy over all 75 cells (the RobustBench
  "common corruptions" number).

The corrupted test sets are generated once per seed and cached as `.npy` under
`<cache>/cifar10-c-v<generator version>-seed<seed>/` (2.3 GB for all 75 arrays); the results
are merged under the model's label into `reports/robustness.json`, which carries its
provenance, and a heatmap per model goes to `reports/figures/robustness_<label>.png`.
"""

from __future__ import annotations

import io
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab import corruptions as cc
from cifarlab.errors import CifarlabError
from cifarlab.io import atomic_write_bytes, sha256_file, write_json_atomic
from cifarlab.jpeg import reencode
from cifarlab.runinfo import git_sha, hardware, write_result

log = logging.getLogger(__name__)

JPEG_QUALITIES: tuple[int, ...] = (90, 75, 50, 30)
ECE_BINS = 15
RESULTS_FILE = Path("reports") / "robustness.json"
FIGURES_DIR = Path("reports") / "figures"
# Anchor from the issue: RobustBench's standard-trained WideResNet-28-10 on CIFAR-10-C.
ANCHOR = {
    "model": "WideResNet-28-10 (standard training, RobustBench)",
    "clean": 0.9478,
    "mean_corruption_accuracy": 0.7346,
}


class RobustnessError(CifarlabError):
    """A target that cannot be measured, or a results file that cannot be merged."""


# ---------------------------------------------------------------------------- test sets


def cache_folder(cache_root: Path, seed: int) -> Path:
    return Path(cache_root) / f"cifar10-c-v{cc.GENERATOR_VERSION}-seed{seed}"


def corrupted(
    images: np.ndarray, name: str, severity: int, seed: int, cache_root: Path | None
) -> np.ndarray:
    """The corrupted test set for (name, severity), from the cache or generated and cached."""
    if cache_root is None:
        return cc.corrupt(images, name, severity, seed)
    path = cache_folder(cache_root, seed) / f"{name}-{severity}.npy"
    if path.is_file():
        arr = np.load(path, allow_pickle=False)
        if arr.shape == images.shape and arr.dtype == np.uint8:
            return arr
        log.warning("ignoring %s: shape %s does not match the test set", path, arr.shape)
    t0 = time.perf_counter()
    arr = cc.corrupt(images, name, severity, seed)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())  # temp file + rename: no half-written cache
    log.info("generated %s severity %d in %.1fs", name, severity, time.perf_counter() - t0)
    return arr


def generate(
    cache_root: Path,
    *,
    seed: int = 0,
    names: Iterable[str] = cc.CORRUPTIONS,
    data_cache: Path | None = None,
) -> list[Path]:
    """Fill the cache for `names` x all severities (split across jobs to keep each short)."""
    from cifarlab.data import load_split

    images, _ = load_split("test", cache_dir=data_cache)
    for name in names:
        for s in cc.SEVERITIES:
            corrupted(images, name, s, seed, cache_root)
    return sorted(cache_folder(cache_root, seed).glob("*.npy"))


def stratified_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of a fixed, class-balanced `n`-image subset (the data split's hashing)."""
    from cifarlab.data import stratified_split

    if not 0 < n <= len(labels):
        raise RobustnessError(f"--subset must be in 1..{len(labels)}, got {n}")
    if n == len(labels):
        return np.arange(len(labels))
    _, chosen = stratified_split(labels, val_fraction=n / len(labels))
    return chosen


# ---------------------------------------------------------------------------- metrics


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    from cifarlab.evaluate import expected_calibration_error

    return expected_calibration_error(probs, labels, n_bins)


Infer = Callable[[np.ndarray], np.ndarray]  # uint8 (N, 32, 32, 3) -> logits (N, C)


def predictor_infer(onnx_path: Path, batch_size: int = 500) -> tuple[Infer, dict[str, Any]]:
    """Batched ONNX Runtime inference through the serving path, plus the model's metadata."""
    from dataclasses import asdict

    from cifarlab.serve.predictor import Predictor, preprocess

    predictor = Predictor(onnx_path)

    def infer(images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                predictor.infer(preprocess(images[i : i + batch_size]))
                for i in range(0, len(images), batch_size)
            ]
        )

    return infer, asdict(predictor.info)


def measure(
    infer: Infer,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    cache_root: Path | None = None,
    subset: np.ndarray | None = None,
    names: Iterable[str] = cc.CORRUPTIONS,
    jpeg_qualities: Iterable[int] = JPEG_QUALITIES,
) -> dict[str, Any]:
    """Accuracy (and ECE where cheap) on clean, JPEG and corrupted copies of `images`.

    Corruptions are generated on all of `images` (so a subset sees the same pixels as a full
    run) and then restricted to `subset`.
    """
    idx = np.arange(len(labels)) if subset is None else subset
    y = labels[idx]

    def score(x: np.ndarray) -> tuple[float, float]:
        logits = infer(x)
        return float((logits.argmax(1) == y).mean()), ece(softmax(logits), y)

    t0 = time.perf_counter()
    clean_acc, clean_ece = score(images[idx])
    jpeg = {}
    for q in jpeg_qualities:
        acc, e = score(reencode(images[idx], q))
        jpeg[str(q)] = {"accuracy": acc, "ece": e, "drop": clean_acc - acc}
    table: dict[str, dict[str, float]] = {}
    for name in names:
        table[name] = {}
        for s in cc.SEVERITIES:
            x = corrupted(images, name, s, seed, cache_root)[idx]
            table[name][str(s)] = score(x)[0]
        log.info("%s: %s", name, " ".join(f"{v:.3f}" for v in table[name].values()))
    return {
        "n_images": len(idx),
        "subset": None if subset is None else f"stratified {len(idx)} of {len(labels)}",
        "clean": {"accuracy": clean_acc, "ece": clean_ece},
        "jpeg": jpeg,
        "corruptions": table,
        **summarise(table),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summarise(table: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean corruption accuracy (all cells) and the mean per severity."""
    cells = [v for row in table.values() for v in row.values()]
    return {
        "corruptions_measured": len(table),
        "mean_corruption_accuracy": float(np.mean(cells)) if cells else None,
        "per_severity": {
            str(s): float(np.mean([row[str(s)] for row in table.values()])) for s in cc.SEVERITIES
        }
        if table
        else {},
    }


# ---------------------------------------------------------------------------- outputs


def heatmap(label: str, result: dict[str, Any], path: Path) -> Path:
    """Accuracy per corruption (rows) and severity (columns), with the clean and JPEG numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["corruptions"])
    grid = np.array([[result["corruptions"][n][str(s)] for s in cc.SEVERITIES] for n in names])
    fig, ax = plt.subplots(figsize=(6, 7))
    im = ax.imshow(grid * 100, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (r, c), v in np.ndenumerate(grid):
        ax.text(
            c,
            r,
            f"{v * 100:.0f}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if v < 0.6 else "black",
        )
    ax.set_xticks(range(len(cc.SEVERITIES)), [str(s) for s in cc.SEVERITIES])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    mca = result["mean_corruption_accuracy"]
    ax.set_title(
        f"{label}: clean {result['clean']['accuracy'] * 100:.1f}%, "
        f"mean corruption {mca * 100:.1f}%\n({result['n_images']:,} test images)",
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def public_command(command: str) -> str:
    """The command with machine-local folders (the corruption cache) replaced by a name."""
    args = shlex.split(command)
    for i, a in enumerate(args[:-1]):
        if a in ("--corruption-cache", "--cache-dir"):
            args[i + 1] = "CACHE"
    return shlex.join(args)


def provenance(command: str | None = None) -> dict[str, Any]:
    return {
        "command": public_command(command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "git_sha": git_sha(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
    }


def merge_result(path: Path, label: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Put `entry` under `models[label]` of the JSON at `path` (other models are kept)."""
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RobustnessError(f"{path} is not valid JSON ({exc}); move it away") from None
    models = data.setdefault("models", {})
    old = models.get(label) or {}
    same = (old.get("model") or {}).get("sha256") == (entry.get("model") or {}).get("sha256")
    if (
        same
        and old.get("n_images") == entry.get("n_images")
        and old.get("seed") == entry.get("seed")
    ):
        # The same model measured on other corruptions (long series run as separate jobs):
        # keep the earlier cells and recompute the summaries over all of them.
        table = {**old.get("corruptions", {}), **entry.get("corruptions", {})}
        entry = {**entry, "corruptions": {n: table[n] for n in cc.CORRUPTIONS if n in table}}
        entry.update(summarise(entry["corruptions"]))
        entry["figure"] = entry.get("figure") or old.get("figure")
    models[label] = entry
    for m in models.values():  # entries written before commands were made public
        prov = m.get("provenance") or {}
        if prov.get("command"):
            prov["command"] = public_command(prov["command"])
    data["generator"] = {
        "module": "cifarlab.corruptions",
        "version": cc.GENERATOR_VERSION,
        "parameters": "CIFAR-10-C (Hendrycks & Dietterich 2019, make_cifar_c.py)",
        "corruptions": list(cc.CORRUPTIONS),
        "severities": list(cc.SEVERITIES),
        "jpeg_encoder": "Pillow, default 4:2:0 subsampling",
    }
    data["anchor"] = ANCHOR
    data.pop("provenance", None)  # the file's own block describes this latest write
    return write_result(path, data)


def summary(label: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The few numbers /health shows, with where they come from."""
    q75 = entry.get("jpeg", {}).get("75", {})
    return {
        "clean_accuracy": entry["clean"]["accuracy"],
        "clean_ece": entry["clean"]["ece"],
        "jpeg75_accuracy": q75.get("accuracy"),
        "jpeg75_ece": q75.get("ece"),
        "mean_corruption_accuracy": entry.get("mean_corruption_accuracy"),
        "corruptions_measured": entry.get("corruptions_measured"),
        "test_images": entry["n_images"],
        "source": f"reports/robustness.json#models.{label}",
    }


def update_sidecar(onnx_path: Path, label: str, entry: dict[str, Any]) -> bool:
    """Copy the summary into the model's side-car JSON when it describes this very file."""

    side = onnx_path.with_suffix(".json")
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(data, dict) or data.get("sha256") != sha256_file(onnx_path):
        log.warning("not updating %s: it describes another file", side)
        return False
    data["robustness"] = summary(label, entry)
    write_json_atomic(side, data)
    return True


def run(
    target: Path,
    *,
    label: str | None = None,
    tta: bool = False,
    subset: int | None = None,
    seed: int = 0,
    cache_root: Path | None = None,
    data_cache: Path | None = None,
    out: Path = RESULTS_FILE,
    figures: Path = FIGURES_DIR,
    names: Iterable[str] = cc.CORRUPTIONS,
    command: str | None = None,
) -> dict[str, Any]:
    """Measure `target` (.onnx or run folder) and merge its entry into `out`."""
    from cifarlab.data import load_split

    target = Path(target)
    images, labels = load_split("test", cache_dir=data_cache)
    idx = stratified_subset(labels, subset) if subset else None
    with tempfile.TemporaryDirectory() as tmp:
        if target.suffix == ".onnx":
            onnx_path = target
        elif target.is_dir():
            from cifarlab.checkpoint import load_checkpoint
            from cifarlab.export import ExportError, export_run, run_temperature

            # Calibrated like its served export when the run fitted a temperature.
            temperature: float | None
            try:
                temperature = run_temperature(load_checkpoint(target / "best")[1], tta)
            except ExportError:
                temperature = None
            onnx_path = Path(tmp) / "model.onnx"
            export_run(target, onnx_path, tta=tta, parity_images=0, temperature=temperature)
        else:
            raise RobustnessError(
                f"{target} is neither an .onnx file nor a run folder; pass "
                "src/cifarlab/serve/models/default.onnx or runs/NAME"
            )
        infer, info = predictor_infer(onnx_path)
        result = measure(
            infer, images, labels, seed=seed, cache_root=cache_root, subset=idx, names=names
        )
    label = label or (target.stem if target.suffix == ".onnx" else target.name)
    entry = {
        "target": target.name if target.suffix == ".onnx" else f"runs/{target.name}",
        "model": {k: info.get(k) for k in ("name", "run", "tta", "sha256", "temperature")},
        **result,
        "seed": seed,
        "provenance": provenance(command),
    }
    if result["corruptions"]:
        entry["figure"] = f"robustness_{label}.png"
    data = merge_result(out, label, entry)
    merged = data["models"][label]
    if target.suffix == ".onnx":
        update_sidecar(target, label, merged)
    if merged["corruptions"]:
        heatmap(label, merged, figures / merged["figure"])
    update_report(out.parent / "REPORT.md", data)
    return merged


# ---------------------------------------------------------------------------- prose


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.2f}%"


def render_section(data: dict[str, Any]) -> list[str]:
    """Markdown lines for REPORT.md's robustness section, from robustness.json only."""
    models = data.get("models") or {}
    if not models:
        return []
    qualities = sorted({q for m in models.values() for q in m.get("jpeg", {})}, key=int)[::-1]
    out = [
        "## Robustness: CIFAR-10-C corruptions and JPEG uploads",
        "",
        "Generated by `cifarlab robustness` into [robustness.json](robustness.json). The 15 "
        "corruptions x 5 severities use CIFAR-10-C's parameters (Hendrycks & Dietterich 2019), "
        "regenerated from the official test set with a fixed seed by `cifarlab.corruptions` "
        "(same operations, not bit-identical to the published arrays). JPEG copies are Pillow "
        "re-encodings. Inference is the exported ONNX graph through ONNX Runtime; ECE uses 15 "
        "bins on the graph's probabilities. Models marked with a subset were measured on a "
        "fixed, class-stratified subset of the test set (the same images for each of them).",
        "",
        "| model | test images | clean | "
        + " | ".join(f"JPEG q{q}" for q in qualities)
        + " | mean corruption | ECE clean | ECE q75 |",
        "|---|---:|---:|" + "---:|" * len(qualities) + "---:|---:|---:|",
    ]
    for label, m in models.items():
        jpeg = m.get("jpeg", {})
        cells = [_pct(jpeg[q]["accuracy"]) if q in jpeg else "" for q in qualities]
        ece75 = jpeg.get("75", {}).get("ece")
        n = f"{m['n_images']:,}" + (" (subset)" if m.get("subset") else "")
        out.append(
            f"| {label} | {n} | {_pct(m['clean']['accuracy'])} | "
            + " | ".join(cells)
            + f" | {_pct(m.get('mean_corruption_accuracy'))} | {_pct(m['clean'].get('ece'))} "
            f"| {_pct(ece75)} |"
        )
    anchor = data.get("anchor")
    if anchor:
        out += [
            "",
            f"Anchor: {anchor['model']}: {_pct(anchor['clean'])} clean, "
            f"{_pct(anchor['mean_corruption_accuracy'])} mean corruption accuracy on the "
            "published CIFAR-10-C arrays.",
        ]
    names = [
        n for n in cc.CORRUPTIONS if any(n in m.get("corruptions", {}) for m in models.values())
    ]
    if names:
        out += [
            "",
            "Accuracy per corruption, averaged over the 5 severities:",
            "",
            "| corruption | " + " | ".join(models) + " |",
            "|---|" + "---:|" * len(models),
        ]
        for n in names:
            row = []
            for m in models.values():
                sev = m.get("corruptions", {}).get(n)
                row.append(_pct(float(np.mean(list(sev.values())))) if sev else "")
            out.append(f"| {n} | " + " | ".join(row) + " |")
    for label, m in models.items():
        if m.get("figure"):
            out += ["", f"![robustness of {label}](figures/{m['figure']})"]
        cmd = (m.get("provenance") or {}).get("command")
        if cmd:
            out += ["", f"{label}: `{cmd}` at git {(m['provenance'].get('git_sha') or 'n/a')[:10]}"]
    out.append("")
    return out


SECTION_START = "<!-- robustness:start (cifarlab robustness renders this from robustness.json) -->"
SECTION_END = "<!-- robustness:end -->"


def section_block(data: dict[str, Any]) -> list[str]:
    """`render_section` between markers, so the section can be re-rendered in place."""
    lines = render_section(data)
    return [SECTION_START, *lines, SECTION_END, ""] if lines else []


def update_report(report: Path, data: dict[str, Any]) -> bool:
    """Re-render the robustness section of an existing REPORT.md (appended if absent)."""
    from cifarlab.io import atomic_write_text

    if not report.is_file():
        return False
    text = report.read_text()
    block = "\n".join(section_block(data))
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(report, text)
    return True
