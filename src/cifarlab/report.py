"""The study report: REPORT.md, results.json and figures from evaluated run folders.

    cifarlab report --runs-dir runs --out reports
    cifarlab report runs/baseline_cnn runs/augmented_cnn runs/mobilenet_v2_transfer

For every run (default: each folder under `runs_dir` that holds an `eval.json`, i.e. was
`cifarlab evaluate`d) this copies `metrics.csv`, `eval.json`, `config.json`, `env.json`,
`timing.json` and `confusion_matrix.png` into `<out>/runs/<name>/` and draws
`training_curves.png` there, so the report can be committed without checkpoints. It then
writes `<out>/figures/three_model_comparison.png`, `<out>/results.json` (schema below) and
`<out>/REPORT.md`, which also embeds the EDA figures found in `<out>/figures/` and, if present,
hand-written notes from `<out>/NOTES.md`.

results.json: `{"models": [{"name", "test_accuracy", "test_loss", "overfitting_gap", "ece",
"params_total", "params_trainable", "train_seconds", "command"}], "hardware", "date",
"git_sha"}`; accuracies, gap and ECE are fractions (0.8742, not 87.42).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError
from cifarlab.io import atomic_write_text, save_figure
from cifarlab.render import duration as _duration
from cifarlab.render import pct as _pct
from cifarlab.robustness import section_block
from cifarlab.runinfo import git_sha, hardware_line, write_result
from cifarlab.runs import CONFUSION_FILE, EVAL_FILE, read_metrics, train_seconds

log = logging.getLogger(__name__)

COPIED_FILES = ("metrics.csv", EVAL_FILE, "config.json", "env.json", "timing.json", CONFUSION_FILE)
CURVES_FILE = "training_curves.png"
COMPARISON_FILE = "three_model_comparison.png"
OWN_FIGURES = {COMPARISON_FILE}
# The seed study's results (test accuracy, test loss, overfitting gap): our floors.
REFERENCE: dict[str, tuple[float, float, float]] = {
    "baseline_cnn": (0.7866, 0.657, 0.0445),
    "augmented_cnn": (0.8057, 0.577, 0.0055),
    "mobilenet_v2_transfer": (0.8742, 0.369, 0.0089),
}
# Report order; runs of other models follow alphabetically.
ORDER = ("baseline_cnn", "augmented_cnn", "mobilenet_v2_transfer", "mobilenet_v2_finetune")
RESULT_KEYS = (
    "name",
    "test_accuracy",
    "test_loss",
    "overfitting_gap",
    "ece",
    "params_total",
    "params_trainable",
    "train_seconds",
    "command",
)


class ReportError(CifarlabError):
    """No runs to report, or a run that has not been evaluated."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _command(env: dict[str, Any]) -> str:
    cmd = env.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def find_runs(runs_dir: str | os.PathLike[str]) -> list[Path]:
    """Evaluated run folders under `runs_dir`, in report order."""
    root = Path(runs_dir)
    runs = [p for p in root.iterdir() if (p / EVAL_FILE).is_file()] if root.is_dir() else []
    return sorted(runs, key=_order_key)


def _order_key(run: Path) -> tuple[int, str]:
    model = _read_json(run / EVAL_FILE).get("model") or run.name
    return (ORDER.index(model) if model in ORDER else len(ORDER), run.name)


def load_run(run: Path) -> dict[str, Any]:
    """Everything the report needs from one evaluated run folder."""
    if not (run / EVAL_FILE).is_file():
        raise ReportError(f"{run} has no {EVAL_FILE}; run `cifarlab evaluate {run}` first.")
    ev = _read_json(run / EVAL_FILE)
    return {
        "name": run.name,
        "path": run,
        "eval": ev,
        "config": _read_json(run / "config.json"),
        "env": _read_json(run / "env.json"),
        "metrics": read_metrics(run),
        "train_seconds": train_seconds(run),
    }


def result_row(r: dict[str, Any]) -> dict[str, Any]:
    ev = r["eval"]
    row = {
        "name": r["name"],
        "test_accuracy": ev["test_accuracy"],
        "test_loss": ev["test_loss"],
        "overfitting_gap": ev.get("overfitting_gap"),
        "ece": ev["ece"],
        "params_total": ev["params_total"],
        "params_trainable": ev["params_trainable"],
        "train_seconds": round(r["train_seconds"], 1),
        "command": _command(r["env"]),
    }
    assert tuple(row) == RESULT_KEYS
    return row


# ---------------------------------------------------------------- figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(name: str, rows: list[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train vs validation."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r["epoch"] for r in rows]
    for ax, key, label in ((ax1, "loss", "cross-entropy loss"), (ax2, "acc", "accuracy")):
        for split, legend in (("train", "train"), ("val", "validation")):
            # Runs without a held-out split leave the val columns empty: plot what exists.
            col = f"{split}_{key}"
            pts = [(e, r[col]) for e, r in zip(epochs, rows, strict=True) if col in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=legend)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(f"{name}: training curves")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_comparison(runs: list[dict[str, Any]], path: Path) -> Path:
    """Validation accuracy per epoch for every run, and test accuracy against the floors."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in runs:
        pts = [(m["epoch"], m["val_acc"]) for m in r["metrics"] if "val_acc" in m]
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=r["name"])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation accuracy")
    ax1.set_title("Validation accuracy per epoch")
    ax1.grid(alpha=0.3)
    if ax1.lines:
        ax1.legend(fontsize=8)
    names = [r["name"] for r in runs]
    accs = [r["eval"]["test_accuracy"] for r in runs]
    bars = ax2.bar(range(len(runs)), accs, color="tab:blue")
    for i, r in enumerate(runs):
        ref = REFERENCE.get(r["eval"].get("model") or "")
        if ref:
            ax2.plot([i - 0.4, i + 0.4], [ref[0], ref[0]], "r--", lw=1.5)
    ax2.bar_label(bars, labels=[f"{a:.2%}" for a in accs], fontsize=8)
    ax2.set_xticks(range(len(runs)), names, rotation=20, ha="right", fontsize=8)
    ax2.set_ylim(min([*accs, 0.7]) - 0.05, 1.0)
    ax2.set_ylabel("test accuracy")
    ax2.set_title("Test accuracy (red dashes: seed-study floor)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


# ---------------------------------------------------------------- markdown


def _results_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | run | params (total) | params (trainable) | test acc | test loss | "
        "overfitting gap | ECE | train wall time | inference img/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ev = r["eval"]
        ips = ev.get("inference_images_per_second")
        lines.append(
            f"| {ev.get('model')} | {r['name']} | {ev['params_total']:,} | "
            f"{ev['params_trainable']:,} | {_pct(ev['test_accuracy'])} | {ev['test_loss']:.3f} | "
            f"{_pct(ev.get('overfitting_gap'))} | {ev['ece']:.4f} | "
            f"{_duration(r['train_seconds'])} | "
            f"{'n/a' if ips is None else f'{ips:,.0f}'} |"
        )
    return lines


def _floor_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | run | test acc | floor (seed study) | difference | test loss (seed) | "
        "gap (seed) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    missed = []
    for r in runs:
        ev = r["eval"]
        ref = REFERENCE.get(ev.get("model") or "")
        if not ref:
            continue
        diff = ev["test_accuracy"] - ref[0]
        lines.append(
            f"| {ev['model']} | {r['name']} | {_pct(ev['test_accuracy'])} | {_pct(ref[0])} | "
            f"{100 * diff:+.2f} pp | {ev['test_loss']:.3f} ({ref[1]:.3f}) | "
            f"{_pct(ev.get('overfitting_gap'))} ({_pct(ref[2])}) |"
        )
        if diff < 0:
            missed.append(
                f"**{r['name']} misses its floor by {-100 * diff:.2f} percentage points.**"
            )
    if len(lines) == 2:
        return []
    if missed:
        lines += ["", *missed, "See the notes below for why and what would fix it."]
    else:
        lines += ["", "Every reported model meets or beats its floor."]
    return lines


def _calibration_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| run | temperature T | test ECE before | test ECE after | test NLL before | "
        "test NLL after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ev = r["eval"]
        lines.append(
            f"| {r['name']} | {ev['temperature']:.3f} | {ev['ece']:.4f} | "
            f"{ev['ece_after_temperature']:.4f} | {ev['test_loss']:.4f} | "
            f"{ev['test_loss_after_temperature']:.4f} |"
        )
    return lines


def _per_class_table(ev: dict[str, Any]) -> list[str]:
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, m in ev["per_class"].items():
        lines.append(
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
            f"{m['support']} |"
        )
    return lines


def report_markdown(out: Path, runs: list[dict[str, Any]], results: dict[str, Any]) -> str:
    """REPORT.md for `runs` from what the reports folder `out` holds: EDA figures, NOTES.md and
    the robustness section (`cifarlab robustness` writes robustness.json and its heatmaps)."""
    eda = sorted(
        f"figures/{p.name}"
        for p in (out / "figures").glob("*.png")
        if p.name not in OWN_FIGURES and not p.name.startswith("robustness_")
    )
    notes_path = out / "NOTES.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    robust = out / "robustness.json"
    section = section_block(json.loads(robust.read_text())) if robust.is_file() else []
    return render_markdown(runs, eda, notes, results, section)


def render_markdown(
    runs: list[dict[str, Any]],
    eda_figures: list[str],
    notes: str,
    results: dict[str, Any],
    robustness_section: list[str] | None = None,
) -> str:
    best = max(runs, key=lambda r: r["eval"]["test_accuracy"])
    ev0 = runs[0]["eval"]
    out = [
        "# CIFAR-10 study: results",
        "",
        f"Generated by `cifarlab report` on {results['date']} "
        f"at git {results['git_sha'] or 'n/a'}.",
        f"Report written on: {results['hardware']}; each run's own machine is in its "
        "`env.json` and `eval.json` (runs may come from different machines). "
        f"Test split: the official {ev0['n_test']:,} images; "
        "models were selected on the 10,000-image validation split held out of the 50,000 "
        "training images. Machine-readable: [results.json](results.json); per-run metrics, "
        "configs and evaluation in [runs/](runs/).",
        "",
        "## Results",
        "",
        *_results_table(runs),
        "",
        "Overfitting gap = train accuracy minus validation accuracy at the selected (best) "
        "epoch, from metrics.csv (train accuracy is the running accuracy of that epoch, with "
        "dropout and augmentation on). ECE: 15 equal-width confidence bins on the test split, "
        "before temperature scaling. Train wall time: sum of the epoch times in metrics.csv, "
        "plus backbone feature extraction for the transfer model and the parent run for the "
        "fine-tuned one; the CPU was shared with other jobs, so times are upper bounds. "
        "Inference img/s: test-set forward passes only, batch 256, through "
        f"{_backends(runs)} on the machine that evaluated the run.",
        "",
        "## Against the seed study",
        "",
        *_floor_lines(runs),
        "",
        f"![comparison](figures/{COMPARISON_FILE})",
        "",
    ]
    if notes.strip():
        out += ["## Notes", "", notes.strip(), ""]
    out += ["## Calibration (temperature scaling fitted on validation)", ""]
    out += [*_calibration_table(runs), ""]
    out += [
        f"## Best model: {best['name']} ({_pct(best['eval']['test_accuracy'])} test accuracy)",
        "",
        f"![confusion matrix of {best['name']}](runs/{best['name']}/{CONFUSION_FILE})",
        "",
        *_per_class_table(best["eval"]),
        "",
        "## Training curves",
        "",
    ]
    for r in runs:
        out += [f"### {r['name']}", "", f"![{r['name']}](runs/{r['name']}/{CURVES_FILE})", ""]
        cmd = _command(r["env"])
        if cmd:
            out += [f"Command: `{cmd}`", ""]
    out += robustness_section or []
    if eda_figures:
        out += ["## Exploratory data analysis", ""]
        for fig in eda_figures:
            out += [f"![{Path(fig).stem}]({fig})", ""]
    out += [
        "## Reproduce",
        "",
        "```",
        "cifarlab data prepare --source ../shared/datasets/cifar-10-batches-bin",
        *[c for c in (_command(r["env"]) for r in runs) if c],
        *[f"cifarlab evaluate {_rel_run(r)}" for r in runs],
        "cifarlab report " + " ".join(_rel_run(r) for r in runs),
        "```",
        "",
    ]
    return "\n".join(out)


def _backends(runs: list[dict[str, Any]]) -> str:
    names = sorted({str(r["eval"].get("inference_backend", "torch")) for r in runs})
    return " / ".join(names)


def _rel_run(r: dict[str, Any]) -> str:
    return f"{Path(r['path']).parent.name}/{r['name']}"


def build_report(
    runs: list[str | os.PathLike[str]] | None = None,
    runs_dir: str | os.PathLike[str] = "runs",
    out_dir: str | os.PathLike[str] = "reports",
) -> Path:
    """Write REPORT.md, results.json and figures for `runs` (default: every evaluated run)."""

    paths = [Path(r) for r in runs] if runs else find_runs(runs_dir)
    if not paths:
        raise ReportError(
            f"no evaluated runs under {runs_dir}; train, then `cifarlab evaluate runs/NAME`, "
            "or pass run folders explicitly."
        )
    for p in paths:
        if not p.is_dir():
            raise ReportError(f"run folder {p} does not exist; see `ls {runs_dir}`.")
    loaded = [load_run(p) for p in paths]
    out = Path(out_dir)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    for r in loaded:
        dest = out / "runs" / r["name"]
        dest.mkdir(parents=True, exist_ok=True)
        for fname in COPIED_FILES:
            src = Path(r["path"]) / fname
            # Reporting committed run folders (`cifarlab report reports/runs/*`) copies nothing.
            if src.is_file() and (dest / fname).resolve() != src.resolve():
                shutil.copyfile(src, dest / fname)
        if r["metrics"]:
            plot_curves(r["name"], r["metrics"], dest / CURVES_FILE)
    plot_comparison(loaded, figs / COMPARISON_FILE)

    results = {
        "models": [result_row(r) for r in loaded],
        "hardware": hardware_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
    }
    results = write_result(out / "results.json", results)  # + the provenance block
    report = out / "REPORT.md"
    atomic_write_text(report, report_markdown(out, loaded, results))
    log.info("report with %d runs written to %s", len(loaded), report)
    return report
