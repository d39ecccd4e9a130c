"""The one way numbers reach prose: markdown blocks rendered from committed JSON.

    cifarlab render            # rewrite every marked block (and reports/REPORT.md) from JSON
    cifarlab render --check    # exit 1, naming the files, if any committed doc is stale

A number in README.md, docs/*.md or reports/ markdown is never typed by hand: it sits between
two markers and is produced by a *fragment*, a function here that reads committed JSON under
`reports/` and returns markdown:

    <!-- bench:NAME:start -->
    ...whatever fragment NAME renders (a table, a sentence)...
    <!-- bench:NAME:end -->

The markers may also enclose an inline span inside a sentence (start and end on one line).
`reports/REPORT.md` is rendered whole by `cifarlab.report.render_markdown` from
`reports/results.json` and `reports/runs/*/` (with `reports/NOTES.md`, whose own blocks are
rendered first). `tests/test_render.py` re-renders everything and fails when a committed doc
no longer matches its JSON.

How to add a rendered number:

1. Make the number come from a script that writes JSON with its provenance
   (`cifarlab.runinfo.write_result`), and commit the JSON under `reports/`.
2. Add a fragment below: `@fragment("my-name")` on a function `(root: Path) -> str` that reads
   the JSON with `load(root, "reports/bench/x.json")` and formats it (use `pct`, `spread`).
   Derived figures (ratios, medians, "met in k of N") are computed here or by the bench, from
   the stored data, never typed.
3. Put `<!-- bench:my-name:start --><!-- bench:my-name:end -->` where it belongs in the
   markdown, run `cifarlab render`, commit both.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError
from cifarlab.io import atomic_write_text

Fragment = Callable[[Path], str]
FRAGMENTS: dict[str, Fragment] = {}
# Markdown files with marked blocks, relative to the repository root (globs allowed).
DOCUMENTS = ("README.md", "docs/*.md", "reports/NOTES.md")
REPORT = "reports/REPORT.md"
MARKER = re.compile(
    r"<!-- bench:(?P<name>[A-Za-z0-9_.-]+):start -->(?P<body>.*?)<!-- bench:(?P=name):end -->",
    re.DOTALL,
)


class RenderError(CifarlabError):
    """A marked block names no fragment, or the JSON a fragment needs is missing."""


def fragment(name: str) -> Callable[[Fragment], Fragment]:
    """Register `fn` as the renderer of `<!-- bench:NAME:start/end -->` blocks."""

    def deco(fn: Fragment) -> Fragment:
        if name in FRAGMENTS:
            raise ValueError(f"fragment {name!r} registered twice")
        FRAGMENTS[name] = fn
        return fn

    return deco


def load(root: Path, rel: str) -> dict[str, Any]:
    """JSON file `rel` under `root`, or a RenderError naming it."""
    path = root / rel
    if not path.is_file():
        raise RenderError(f"{rel} is missing; rerun the command that writes it, then render.")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# ---------------------------------------------------------------- formatting helpers


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage: 0.8742 -> '87.42%'."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def spread(values: list[float], target: float, fmt: Callable[[float], str], above: bool) -> str:
    """'met in 3 of 5 rounds (median 81%, range 74%-89%)': per-round values against a target."""
    met = sum((v >= target) if above else (v <= target) for v in values)
    return (
        f"met in {met} of {len(values)} rounds (median {fmt(statistics.median(values))}, "
        f"range {fmt(min(values))}-{fmt(max(values))})"
    )


def provenance_of(data: dict[str, Any]) -> dict[str, Any]:
    """The `provenance` block (`cifarlab.runinfo`), or the top-level fields of older files."""
    prov = data.get("provenance")
    if isinstance(prov, dict):
        return prov
    return {k: data.get(k) for k in ("command", "date", "hardware")}


def machine(data: dict[str, Any]) -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores, AMX bf16' from a result's hardware record."""
    hw = provenance_of(data).get("hardware") or {}
    if isinstance(hw, str):  # files from before the one format: a line of text
        return hw
    cpu = hw.get("cpu", "unknown CPU")
    cores = hw.get("cores", hw.get("cpus", "?"))
    if hw.get("amx_bf16"):
        bf16 = "AMX/AVX512-BF16 (native bf16)"
    elif hw.get("avx512_bf16"):
        bf16 = "AVX512-BF16 (native bf16)"
    elif "avx2" in hw:
        bf16 = "AVX2, no native bf16"
    else:
        bf16 = "CPU flags not recorded"
    return f"{cpu}, {cores} cores, {bf16}"


def made_by(data: dict[str, Any]) -> str:
    """'`command` on <date> (<machine>)' for a result file."""
    prov = provenance_of(data)
    date = str(prov.get("date") or "")[:10]
    command = prov.get("command") or "; ".join(data.get("commands") or [])  # --append: several
    return f"`{command}` on {date} ({machine(data)})"


# ---------------------------------------------------------------- rendering


def render_text(text: str, root: Path) -> str:
    """`text` with every marked block re-rendered from the JSON under `root`."""

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in FRAGMENTS:
            known = ", ".join(sorted(FRAGMENTS))
            raise RenderError(f"no fragment named {name!r}; known: {known}")
        body = FRAGMENTS[name](root).strip("\n")
        if "\n" in m.group("body") or "\n" in body:  # block form: markers on their own lines
            body = f"\n{body}\n"
        return f"<!-- bench:{name}:start -->{body}<!-- bench:{name}:end -->"

    return MARKER.sub(sub, text)


def documents(root: Path) -> list[Path]:
    """The markdown files `render` maintains (REPORT.md last: it embeds NOTES.md)."""
    found: list[Path] = []
    for pattern in DOCUMENTS:
        found += sorted(p for p in root.glob(pattern) if p.is_file())
    return found


def report_text(root: Path) -> str | None:
    """reports/REPORT.md as `cifarlab report` renders it from the committed run JSON."""
    from cifarlab import report

    results_path = root / "reports" / "results.json"
    if not results_path.is_file():
        return None
    results = json.loads(results_path.read_text())
    runs = [report.load_run(root / "reports" / "runs" / m["name"]) for m in results["models"]]
    return report.report_markdown(root / "reports", runs, results)


def render(root: str | Path = ".", check: bool = False) -> list[Path]:
    """Re-render every document under `root`; return those that changed (or would, `check`)."""
    root = Path(root)
    stale: list[Path] = []
    for path in documents(root):
        old = path.read_text()
        new = render_text(old, root)
        if new != old:
            stale.append(path)
            if not check:
                atomic_write_text(path, new)
    report = report_text(root)
    path = root / REPORT
    if report is not None and (not path.is_file() or path.read_text() != report):
        stale.append(path)
        if not check:
            atomic_write_text(path, report)
    return stale


# ---------------------------------------------------------------- fragments: data


@fragment("data-prepare")
def _data_prepare(root: Path) -> str:
    d = load(root, "reports/bench/data_prepare.json")
    cold, warm = d["prepare_cold"], d["prepare_warm_verify"]
    return (
        f"a cold prepare from the folder takes {cold['median_s']:g} s (median of "
        f"{d['repeats']}; fastest {cold['min_s']:g} s) and the warm check "
        f'{warm["median_s"]:g} s; `load_split("train")` {d["load_split"]["train"]["median_s"]:g} s '
        f"({made_by(d)}, `reports/bench/data_prepare.json`)"
    )


@fragment("eda-stats")
def _eda_stats(root: Path) -> str:
    s = load(root, "reports/eda.json")["channel_stats"]["train_full"]
    mean = " / ".join(f"{v:.2f}" for v in s["mean"])
    std = " / ".join(f"{v:.2f}" for v in s["std"])
    return f"the {s['images']:,} give mean {mean} and std {std}"


# ---------------------------------------------------------------- fragments: the study


def _run_eval(root: Path, name: str) -> dict[str, Any]:
    return load(root, f"reports/runs/{name}/eval.json")


@fragment("study")
def _study(root: Path) -> str:
    from cifarlab.report import REFERENCE

    res = load(root, "reports/results.json")
    rows = [
        "| model | test acc | floor (seed study) | test loss | ECE (after temperature) | "
        "train wall time | machine |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for m in res["models"]:
        ev = _run_eval(root, m["name"])
        ref = REFERENCE.get(ev.get("model") or "")
        if ref:
            diff = m["test_accuracy"] - ref[0]
            verdict = "met" if diff >= 0 else f"**missed by {-100 * diff:.2f}**"
            floor = f"{pct(ref[0])} ({verdict})"
        else:
            floor = "-"
        rows.append(
            f"| `{m['name']}` ({m['params_total']:,} params, {m['params_trainable']:,} "
            f"trainable) | **{pct(m['test_accuracy'])}** | {floor} | {m['test_loss']:.3f} | "
            f"{m['ece']:.3f} ({ev['ece_after_temperature']:.3f}) | "
            f"{duration(m['train_seconds'])} | {str(ev.get('hardware', '?')).split(',')[0]} |"
        )
    rows += ["", f"Rendered from `reports/results.json` (`cifarlab report`, {res['date'][:10]})."]
    return "\n".join(rows)


@fragment("transfer-results")
def _transfer_results(root: Path) -> str:
    rows = [
        "| run | test acc | test loss | ECE -> after T | wall time (from timing.json) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("mobilenet_v2_transfer", "mobilenet_v2_finetune"):
        ev = _run_eval(root, name)
        timing = load(root, f"reports/runs/{name}/timing.json")
        if "feature_extraction_seconds" in timing:
            cost = (
                f"{timing['feature_extraction_seconds']:.0f} s features + "
                f"{timing['head_seconds']:.0f} s head"
            )
        else:
            cost = f"+ {timing['finetune_seconds']:.0f} s fine-tuning"
        rows.append(
            f"| {name} | {pct(ev['test_accuracy'])} | {ev['test_loss']:.3f} | "
            f"{ev['ece']:.3f} -> {ev['ece_after_temperature']:.3f} | {cost} |"
        )
    return "\n".join(rows)


@fragment("transfer-floor")
def _transfer_floor(root: Path) -> str:
    from cifarlab.report import REFERENCE

    floor = REFERENCE["mobilenet_v2_transfer"][0]
    frozen = _run_eval(root, "mobilenet_v2_transfer")["test_accuracy"]
    tuned = _run_eval(root, "mobilenet_v2_finetune")["test_accuracy"]
    return (
        f"The frozen 96-px transfer model scores {pct(frozen)}, {100 * (floor - frozen):.2f} "
        f"points under the seed study's {pct(floor)}; fine-tuning reaches {pct(tuned)} "
        f"({100 * (tuned - floor):+.2f} points)."
    )


@fragment("transfer-features")
def _transfer_features(root: Path) -> str:
    d = load(root, "reports/bench/transfer_features.json")
    rows = {(r["backend"], r["dtype"], r["channels_last"]): r for r in d["results"]}
    ort = rows[("onnxruntime", "float32", False)]
    torch32 = rows[("torch", "float32", False)]
    cl = rows[("torch", "float32", True)]
    out = [
        "| backend | dtype | channels_last | img/s | max abs diff vs torch fp32 |",
        "|---|---|---|---:|---:|",
    ]
    for r in d["results"]:
        out.append(
            f"| {r['backend']} | {r['dtype']} | {r['channels_last']} | "
            f"{r['images_per_second']:.0f} | {r['max_abs_diff_vs_fp32']:.1e} |"
        )
    ips = ort["images_per_second"]
    out += [
        "",
        f"onnxruntime ran the backbone {ips / torch32['images_per_second']:.1f}x "
        f"as fast as eager torch fp32 ({ips / cl['images_per_second']:.1f}x "
        f"against channels_last), {d['images']:,} test images at batch {d['batch_size']}; "
        f"{made_by(d)}.",
    ]
    return "\n".join(out)


@fragment("transfer-sizes")
def _transfer_sizes(root: Path) -> str:
    d = load(root, "reports/bench/transfer_sizes.json")
    out = [
        "| input size | test acc | vs floor | feature extraction (train, mirrored train, val) | "
        "img/s | head training |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["sizes"]:
        out.append(
            f"| {r['image_size']} px | {pct(r['test_accuracy'])} | "
            f"{100 * (r['test_accuracy'] - d['floor']):+.2f} pp | "
            f"{r['feature_seconds']:.0f} s ({r['feature_images']:,} images) | "
            f"{r['feature_images_per_second']:.0f} | {r['head_seconds']:.0f} s |"
        )
    smallest = d.get("smallest_size_meeting_floor")
    verdict = (
        f"The smallest size tried that meets the {pct(d['floor'])} floor is **{smallest} px**."
        if smallest
        else f"No size tried meets the {pct(d['floor'])} floor."
    )
    out += ["", f"{verdict} One seed per size; {made_by(d)}."]
    return "\n".join(out)


# ---------------------------------------------------------------- fragments: fast training


@fragment("fast-quick")
def _fast_quick(root: Path) -> str:
    d = load(root, "reports/bench/fast_training_quick.json")
    n = len(d["runs"])
    return (
        f"{pct(d['mean_accuracy'])} +- {100 * d['std_accuracy']:.2f} (mean over {n} seeds) in a "
        f"median {d['median_wall_seconds']:.0f} s ({made_by(d)})"
    )


@fragment("fast-fast94")
def _fast_fast94(root: Path) -> str:
    d = load(root, "reports/bench/fast_training.json")
    n = len(d["runs"])
    if n == 1:
        return (
            f"{pct(d['mean_accuracy'])} (one seed) in {duration(d['median_wall_seconds'])} "
            f"({made_by(d)})"
        )
    return (
        f"{pct(d['mean_accuracy'])} (mean over {n} seeds) in a median "
        f"{duration(d['median_wall_seconds'])} ({made_by(d)})"
    )


def fast_results_table(d: dict[str, Any]) -> str:
    """Per-seed results, then the summary line against the targets."""
    rows = [
        "| seed | test acc (TTA) | no TTA | wall s | reference s (own probes) | ratio | "
        "train img/s | GFLOP/s | precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["runs"]:
        rows.append(
            f"| {r['seed']} | {pct(r['test_accuracy'])} | {pct(r['test_accuracy_no_tta'])} | "
            f"{r['wall_seconds']:.0f} | {r['reference_seconds']:.0f} | "
            f"{r['ratio_to_own_probes']:.3f} | {r['images_per_second']:.0f} | "
            f"{r['gflops_per_second']:.0f} | {r['precision']} |"
        )
    ref = d["reference"]
    rows.append(
        f"| **all {len(d['runs'])}** | **{pct(d['mean_accuracy'])} +- "
        f"{100 * d['std_accuracy']:.2f}** (min {pct(d['min_accuracy'])}) | "
        f"{pct(d['mean_accuracy_no_tta'])} | median {d['median_wall_seconds']:.0f} | "
        f"{d['reference_seconds']:.0f} (median of {len(ref['probes'])} probes: "
        f"{ref['median_images_per_second']:.0f} img/s, TTA {ref['median_eval_seconds']:.0f} s) | "
        f"**{d['ratio_to_reference']:.3f}** | | | |"
    )
    t = d.get("targets")
    if t:
        verdict = "met" if t["met"] else "not met"
        rows.append("")
        rows.append(
            f"Target (mean >= {pct(t['mean_accuracy'])} over >= {t['seeds']} seeds, ratio <= "
            f"{t['ratio_to_reference']}): **{verdict}**; {t['seeds_at_accuracy']} of "
            f"{t['seeds_run']} seeds reached {pct(t['mean_accuracy'])}, "
            f"{t['seeds_within_ratio']} of {t['seeds_run']} were within the ratio of their "
            "own probes."
        )
    hw = d["hardware"]
    rows.append("")
    rows.append(
        f"Hardware: {hw['cpu']}, {hw['cores']} cores (avx512_bf16 {hw['avx512_bf16']}, "
        f"amx_bf16 {hw['amx_bf16']}); torch {d['torch']}; commands: "
        + "; ".join(f"`{c}`" for c in d["commands"])
    )
    return "\n".join(rows)


def fast_ablation_table(d: dict[str, Any]) -> str:
    rows = [
        "| variant | overrides | seeds | test acc (TTA) | no TTA | wall s | ratio to reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, v in d["variants"].items():
        sets = ", ".join(f"`{k}={json.dumps(x)}`" for k, x in v["overrides"].items()) or "-"
        rows.append(
            f"| {label} | {sets} | {len(v['runs'])} | {pct(v['mean_accuracy'])} | "
            f"{pct(v['mean_accuracy_no_tta'])} | {v['median_wall_seconds']:.0f} | "
            f"{v['ratio_to_reference']:.3f} |"
        )
    return "\n".join(rows)


def fast_profile_table(d: dict[str, Any], top: int = 6) -> str:
    rows = []
    for s in d["sizes"]:
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["time_share"].items() if v >= 0.01)
        rows.append(
            f"**{s['size']} px** ({d['precision']}, batch {d['batch_size']}): "
            f"{s['images_per_second']:.0f} img/s = {s['gflops_per_second']:.0f} GFLOP/s. "
            f"Self time: {shares}."
        )
        rows.append("")
        rows.append("| conv call | input shapes | share of step | ms per step | GFLOP/s |")
        rows.append("|---|---|---|---|---|")
        for c in s["convolutions"][:top]:
            gf = "" if c["gflops_per_second"] is None else f"{c['gflops_per_second']:.0f}"
            rows.append(
                f"| {c['op']} | {c['input_shapes']} | {100 * c['share']:.1f}% | "
                f"{c['ms_per_step']:.0f} | {gf} |"
            )
        rows.append("")
    return "\n".join(rows).rstrip()


def _fast_block(root: Path, *, rel: str, table: Callable[[dict[str, Any]], str], how: str) -> str:
    if not (root / rel).is_file():  # a benchmark not run yet is said so, not hidden
        return f"(no `{rel}` yet: `{how}` writes it)"
    return "\n" + table(load(root, rel)) + "\n"


# block name -> (bench JSON, table, the command that writes the JSON)
_FAST_BLOCKS: dict[str, tuple[str, Callable[[dict[str, Any]], str], str]] = {
    "fast-results-fast94": (
        "fast_training_fast94.json",
        fast_results_table,
        "python bench/fast_training.py --preset fast94 --seeds 5",
    ),
    "fast-results-quick": (
        "fast_training_quick.json",
        fast_results_table,
        "python bench/fast_training.py --preset quick --seeds 5",
    ),
    "fast-ablation-fast94": (
        "fast_training_fast94_ablation.json",
        fast_ablation_table,
        "python bench/fast_training.py --preset fast94 --ablation LABEL --set KEY=VALUE",
    ),
    "fast-profile-fast94": (
        "fast_training_layers_fast94.json",
        fast_profile_table,
        "python bench/fast_profile.py --preset fast94",
    ),
}
for _name, (_file, _table, _how) in _FAST_BLOCKS.items():
    fragment(_name)(partial(_fast_block, rel=f"reports/bench/{_file}", table=_table, how=_how))


# ---------------------------------------------------------------- fragments: serving


def _serving_targets(d: dict[str, Any]) -> dict[str, Any]:
    from_json = d.get("targets", {})
    return {
        "fraction": float(from_json.get("c32_target", 0.80)),
        "p99_ms": float(from_json.get("c32_p99_target_ms", 150.0)),
        "p50_ms": float(from_json.get("c1_p50_target_ms", 4.0)),
    }


def _per_round(d: dict[str, Any], concurrency: int, key: str) -> list[float]:
    return [
        float(p[key]) for r in d["rounds"] for p in r["predict"] if p["concurrency"] == concurrency
    ]


@fragment("serving")
def _serving(root: Path) -> str:
    d = load(root, "reports/bench/serving.json")
    floor, model, ceiling = d["floor"], d["model_alone"], d["ceiling_req_per_s"]
    rows = [
        "| what | concurrency | req/s (img/s) | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| framework floor (bare FastAPI upload) | {floor['concurrency']} | "
        f"{floor['req_per_s']:.0f} | {floor['p50_ms']} | {floor['p99_ms']} | {floor['errors']} |",
        f"| ONNX Runtime alone, batch {model['batch_size']} | - | "
        f"{model['images_per_s']:.0f} img/s | - | - | - |",
        f"| ceiling 1/(1/floor + 1/model) | - | {ceiling:.0f} | - | - | - |",
    ]
    for r in d["predict"]:
        rows.append(
            f"| `/predict`, dynamic batching | {r['concurrency']} | {r['req_per_s']:.0f} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
        )
    if d.get("naive"):
        r = d["naive"]
        rows.append(
            f"| `/predict`, one model call per request | {r['concurrency']} | "
            f"{r['req_per_s']:.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
        )
    settings = d["settings"]
    rows += [
        "",
        f"Model `{model['model']}` (version {model['model_version']}, TTA {model['tta']}); "
        f"medians of {settings.get('repeats', 1)} interleaved rounds of "
        f"{settings['seconds_per_run']:g} s; {made_by(d)}. {_serving_summary(root)}",
    ]
    return "\n".join(rows)


@fragment("serving-summary")
def _serving_summary(root: Path) -> str:
    d = load(root, "reports/bench/serving.json")
    t = _serving_targets(d)
    # Each round's service throughput over that round's own ceiling, from the raw rounds.
    fractions = [
        p["req_per_s"] / (1 / (1 / r["floor"]["req_per_s"] + 1 / r["model_alone"]["images_per_s"]))
        for r in d["rounds"]
        for p in r["predict"]
        if p["concurrency"] == 32
    ]
    p99 = _per_round(d, 32, "p99_ms")
    p50 = _per_round(d, 1, "p50_ms")
    return (
        f"Targets, each round's ratio computed within that round: at concurrency 32, >= "
        f"{t['fraction']:.0%} of the ceiling "
        f"{spread(fractions, t['fraction'], lambda v: f'{v:.0%}', above=True)} and p99 <= "
        f"{t['p99_ms']:g} ms {spread(p99, t['p99_ms'], lambda v: f'{v:.0f} ms', above=False)}; "
        f"at concurrency 1, p50 <= {t['p50_ms']:g} ms "
        f"{spread(p50, t['p50_ms'], lambda v: f'{v:.1f} ms', above=False)}."
    )


@fragment("ort-spin")
def _ort_spin(root: Path) -> str:
    d = load(root, "reports/bench/ort_spin.json")
    labels = {"off": "spinning off", "always": "spinning always", "inside_calls": "inside calls"}
    rows = [
        "| ORT threads | batch 1: ms per call | batch 1: CPU ms per call | batch 32: ms per call |",
        "|---|---:|---:|---:|",
    ]
    for key, (one, many) in d["results"].items():
        rows.append(
            f"| {labels.get(key, key)} | {one['median_ms']:.2f} | {one['cpu_ms_per_call']:.1f} | "
            f"{many['median_ms']:.1f} |"
        )
    rows += ["", f"Model `{d['model']}`; {made_by(d)}."]
    return "\n".join(rows)


# ---------------------------------------------------------------- fragments: docker


@fragment("docker-smoke")
def _docker_smoke(root: Path) -> str:
    d = load(root, "reports/bench/docker-smoke.json")
    p = d["predict"]
    rows = [
        "| check | result |",
        "| --- | --- |",
        f"| result | {d['result']} |",
        f"| engine | {d.get('engine_version') or d.get('engine')} |",
        f"| build | {d['build_seconds']} s |",
        f"| image size | {d['image_bytes'] / 1e6:.0f} MB |",
        f"| `/predict` with a generated PNG | 200, `{p['model']}` (version "
        f"{p['model_version']}), ten probabilities summing to "
        f"{sum(p['probabilities'].values()):.3f} |",
        f"| container user | uid {d['container_uid']} |",
        "",
        f"{made_by(d)}; record `reports/bench/docker-smoke.json`.",
    ]
    return "\n".join(rows)


@fragment("serving-readme")
def _serving_readme(root: Path) -> str:
    d = load(root, "reports/bench/serving.json")
    meta = load(root, "src/cifarlab/serve/models/default.json")
    onnx = root / "src/cifarlab/serve/models/default.onnx"
    by_c = {p["concurrency"]: p for p in d["predict"]}
    c32, c1, naive = by_c[32], by_c[1], d.get("naive")
    speedup = (
        f", {c32['req_per_s'] / naive['req_per_s']:.1f}x a one-call-per-request service"
        if naive
        else ""
    )
    measured = d["model_alone"].get("model_version")
    current = str(meta.get("sha256") or "")[:12]
    if measured and current and measured != current:  # the bundled file changed since the run
        return (
            f"measured with an earlier bundled model (version `{measured}`; today's is "
            f"`{current}`, not load-tested yet): `/predict` served a median "
            f"{c32['req_per_s']:.0f} req/s at 32 concurrent clients with p99 "
            f"{c32['p99_ms']:.0f} ms{speedup}, and p50 {c1['p50_ms']:.1f} ms at one client "
            f"({made_by(d)}). {_serving_summary(root)}"
        )
    return (
        f"with the bundled model (`{meta['name']}`, {pct(meta['test_accuracy'])} test accuracy "
        f"in its metadata, TTA {meta['tta']}, {onnx.stat().st_size / 1e6:.1f} MB ONNX), "
        f"`/predict` served a median {c32['req_per_s']:.0f} req/s at 32 concurrent clients "
        f"with p99 {c32['p99_ms']:.0f} ms{speedup}, and p50 {c1['p50_ms']:.1f} ms at one "
        f"client ({made_by(d)}). {_serving_summary(root)}"
    )


@fragment("tta-gain")
def _tta_gain(root: Path) -> str:
    d = load(root, "reports/bench/fast_training_quick.json")
    gains = [r["test_accuracy"] - r["test_accuracy_no_tta"] for r in d["runs"]]
    return (
        f"{100 * statistics.mean(gains):.2f} points of test accuracy (mean over the "
        f"{len(gains)} `quick` seeds in `reports/bench/fast_training_quick.json`, range "
        f"{100 * min(gains):.2f}-{100 * max(gains):.2f})"
    )


@fragment("train-speed")
def _train_speed(root: Path) -> str:
    d = load(root, "reports/bench/train_speed.json")
    cells: dict[str, dict[tuple[bool, bool], float]] = {}
    for r in d["results"]:
        cells.setdefault(r["model"], {})[(r["bf16"], r["channels_last"])] = r["images_per_s"]
    rows = [
        "| model | fp32 | fp32 + channels_last | bf16 autocast | bf16 + channels_last |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, c in cells.items():
        vals = [c.get(k) for k in ((False, False), (False, True), (True, False), (True, True))]
        rows.append(f"| {model} | " + " | ".join(f"{v:.0f} img/s" for v in vals if v) + " |")
    rows += [
        "",
        f"Training steps of batch {d['batch_size']}, Adam, {d['steps']} timed steps per cell; "
        f"{made_by(d)}.",
    ]
    return "\n".join(rows)


@fragment("seed-runs")
def _seed_runs(root: Path) -> str:
    from cifarlab.report import REFERENCE

    rows = [
        "| model | epochs | best epoch | val acc | test acc | test loss | train time | floor |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    res = {m["name"]: m for m in load(root, "reports/results.json")["models"]}
    for name in ("baseline_cnn", "augmented_cnn"):
        ev, m = _run_eval(root, name), res[name]
        config = load(root, f"reports/runs/{name}/config.json")
        floor = REFERENCE[name][0]
        diff = ev["test_accuracy"] - floor
        rows.append(
            f"| {name} | {config['epochs']} | {ev['epoch']} | "
            f"{pct(ev.get('val_accuracy_at_epoch'))} | "
            f"{pct(ev['test_accuracy'])} | {ev['test_loss']:.3f} | "
            f"{duration(m['train_seconds'])} | {pct(floor)} "
            f"({'met' if diff >= 0 else 'missed'}, {100 * diff:+.2f}) |"
        )
    return "\n".join(rows)
