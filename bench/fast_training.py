"""Benchmark a fast-training preset against the published recipe, timed on the same machine.

    python bench/fast_training.py --preset fast94 --seeds 1 --first-seed 0 --append
    python bench/fast_training.py --preset quick --seeds 5
    python bench/fast_training.py --preset fast94 --ablation "SGD, not Muon" --set optimizer=sgd

The yardstick is the reference recipe (airbench94 as published: the 64/256/256 net, batch
1024, 9.9 epochs at 32 px, its TTA; `cifarlab.recipes` preset `airbench94`) at the machine's
best native precision. Its time on this machine is its image count divided by its measured
training rate, plus its TTA evaluation:

- before and after every seed's run, this process times the reference's own training step
  (`cifarlab.fast.train` of the `airbench94` preset cut to a few steps) for at least
  `--probe-seconds` after a warm-up, and its TTA evaluation on `--probe-eval-images` test
  images (scaled to the 10,000 of the test set);
- `reference_seconds` uses the median of all probes, so a burst of other load on the shared
  machine during one probe does not decide it; each probe is kept in the JSON.

Each seed then runs `cifarlab fast-train` in a fresh process (the command a user runs) that
starts from the prepared data cache; its `wall_seconds` (model build, whitening, training,
TTA evaluation; the data already in memory) is what the ratio uses. Results are written
after every seed, so a cut-short benchmark still leaves honest numbers behind, and
`--append` adds seeds from a later invocation to the same file (refusing another CPU).

Output: `reports/bench/fast_training_<preset>.json` (or `--out`). `--ablation LABEL --set
key=value ...` instead trains the preset with those overrides and records the variant (its
accuracy, wall time and ratio) under LABEL in `reports/bench/fast_training_<preset>_ablation.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifarlab.io import write_json_atomic
from cifarlab.runinfo import git_sha, hardware

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "airbench94"
TEST_IMAGES = 10_000
TARGETS = {  # issue 10: mean accuracy over >= 5 seeds, median wall / reference
    "fast94": {"mean_accuracy": 0.94, "ratio_to_reference": 0.55, "seeds": 5},
    "quick": {"mean_accuracy": 0.90, "ratio_to_reference": 0.15, "seeds": 5},
}
HARDWARE_KEYS = ("cpu", "cores", "avx2", "avx512f", "avx512_bf16", "amx_bf16")


class BenchError(RuntimeError):
    """A benchmark that would mix incomparable numbers."""


# --------------------------------------------------------------------------------------------
# Pure arithmetic (unit-tested on given timings)


def reference_seconds(
    probe_rates: list[float], eval_seconds: list[float], train_images: int
) -> float:
    """The reference's projected wall time: images / median probe rate + median TTA time."""
    if not probe_rates or not eval_seconds or min(probe_rates) <= 0:
        raise BenchError("reference_seconds needs at least one positive probe rate and eval time")
    return train_images / statistics.median(probe_rates) + statistics.median(eval_seconds)


def ratio_to_reference(wall_seconds: list[float], reference: float) -> float:
    """Median wall time of our runs over the reference's time on the same machine."""
    return statistics.median(wall_seconds) / reference


def check_same_hardware(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to put runs from two different CPUs (model, cores or flags) in one file."""
    diff = {k: (old.get(k), new.get(k)) for k in HARDWARE_KEYS if old.get(k) != new.get(k)}
    if diff:
        raise BenchError(
            f"--append would mix hardware in one file: {diff} (old, this machine); "
            "write this machine's runs to another file with --out"
        )


def summarise(
    preset: str,
    runs: list[dict[str, Any]],
    probes: list[dict[str, Any]],
    reference: dict[str, Any],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The benchmark file: per-seed runs, the reference probes and the derived ratios."""
    rates = [p["images_per_second"] for p in probes]
    evals = [p["eval_seconds"] for p in probes]
    ref = reference_seconds(rates, evals, reference["train_images"])
    accs = [r["test_accuracy"] for r in runs]
    walls = [r["wall_seconds"] for r in runs]
    out: dict[str, Any] = {
        "preset": preset,
        "runs": runs,
        "mean_accuracy": round(statistics.fmean(accs), 5),
        "std_accuracy": round(statistics.stdev(accs), 5) if len(accs) > 1 else 0.0,
        "min_accuracy": round(min(accs), 5),
        "mean_accuracy_no_tta": round(statistics.fmean(r["test_accuracy_no_tta"] for r in runs), 5),
        "median_wall_seconds": round(statistics.median(walls), 2),
        "reference_seconds": round(ref, 1),
        "ratio_to_reference": round(ratio_to_reference(walls, ref), 4),
        "reference": {
            **reference,
            "median_images_per_second": round(statistics.median(rates), 1),
            "median_eval_seconds": round(statistics.median(evals), 2),
            "probes": probes,
        },
        **provenance,
    }
    target = TARGETS.get(preset)
    if target:
        out["targets"] = {
            **target,
            "seeds_run": len(runs),
            "seeds_at_accuracy": sum(a >= target["mean_accuracy"] for a in accs),
            # Each seed against its own probes (before and after it), not the pooled median.
            "seeds_within_ratio": sum(
                r["ratio_to_own_probes"] <= target["ratio_to_reference"] for r in runs
            ),
            "met": bool(
                len(runs) >= target["seeds"]
                and out["mean_accuracy"] >= target["mean_accuracy"]
                and out["ratio_to_reference"] <= target["ratio_to_reference"]
            ),
        }
    return out


def override_flags(overrides: dict[str, Any]) -> list[str]:
    """`{"low_res_epochs": 2, "channels_last": False}` -> `cifarlab fast-train` flags."""
    flags: list[str] = []
    for key, value in overrides.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):
            flags += [name, *map(str, value)]
        else:
            flags += [name, str(value)]
    return flags


def parse_set(items: list[str]) -> dict[str, Any]:
    """`["optimizer=sgd", "epochs=9", "widths=[32,128,128]"]` -> typed overrides (JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set wants KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


# --------------------------------------------------------------------------------------------
# Measurements


def probe_reference(
    train_data: Any, test_data: Any, seconds: float, eval_images: int, seed: int = 0
) -> dict[str, Any]:
    """Time the reference's training step for >= `seconds` after a warm-up, and its TTA.

    Both calls go through `cifarlab.fast.train`, the same code as the runs being compared;
    the first (2 steps) warms up oneDNN's kernels and sizes the timed one.
    """
    from cifarlab import fast

    ref = fast.get_preset(REFERENCE, progress=False, seed=seed)
    per_epoch = len(train_data[1]) // ref.batch_size
    test = (test_data[0][:eval_images], test_data[1][:eval_images])
    warm = fast.train(
        fast.get_preset(REFERENCE, epochs=2 / per_epoch, progress=False), train_data, test
    )
    steps = max(3, math.ceil(1.3 * seconds * warm["images_per_second"] / ref.batch_size))
    timed = fast.train(
        fast.get_preset(REFERENCE, epochs=steps / per_epoch, progress=False), train_data, test
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "steps": steps,
        "train_seconds": timed["train_seconds"],
        "images_per_second": timed["images_per_second"],
        # TTA on `eval_images` test images, scaled to the whole test set.
        "eval_seconds": round(timed["eval_seconds"] * TEST_IMAGES / len(test[1]), 2),
        "precision": timed["precision"],
    }


def run_seed(preset: str, seed: int, run_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "cifarlab", "fast-train", "--preset", preset, "--seed", str(seed),
        "--run-dir", str(run_dir), "--precision", "auto", "--no-progress",
        *override_flags(overrides),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    process_seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"seed {seed} failed with exit code {proc.returncode}")
    r = json.loads((run_dir / "result.json").read_text())
    keep = (
        "seed", "test_accuracy", "test_accuracy_no_tta", "test_accuracy_flip_tta",
        "wall_seconds", "train_seconds", "eval_seconds", "setup_seconds", "train_images",
        "images_per_second", "train_gflop", "gflops_per_second", "precision", "threads",
    )  # fmt: skip
    return {**{k: r.get(k) for k in keep}, "process_seconds": round(process_seconds, 2)}


def _load_data() -> tuple[Any, Any]:
    from cifarlab import data

    data.prepare(progress=False)
    return data.load_split("train_full"), data.load_split("test")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fast94")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (first-seed ...)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--append", action="store_true", help="add these seeds to an existing --out")
    p.add_argument("--runs-root", type=Path, default=REPO / "runs", help="where run folders go")
    p.add_argument("--probe-seconds", type=float, default=60.0, help="timed reference probe")
    p.add_argument("--probe-eval-images", type=int, default=2000)
    p.add_argument("--ablation", metavar="LABEL", help="record a variant of the preset")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="preset overrides")
    p.add_argument(
        "--render",
        action="store_true",
        help="only re-render the docs from the committed JSON (same as `cifarlab render`)",
    )
    args = p.parse_args(argv)
    if args.render:
        from cifarlab.render import render

        render(REPO)  # the one renderer: every marked block, this bench's tables among them
        return 0

    overrides = parse_set(args.set)
    if overrides and not args.ablation:
        raise SystemExit("--set changes the recipe: name the variant with --ablation LABEL")
    stem = f"fast_training_{args.preset}" + ("_ablation" if args.ablation else "")
    out = args.out or REPO / "reports" / "bench" / f"{stem}.json"
    command = shlex.join(["python", "bench/fast_training.py", *(argv or sys.argv[1:])])
    hw = hardware()
    old: dict[str, Any] = {}
    if (args.append or args.ablation) and out.is_file():
        old = json.loads(out.read_text())
        check_same_hardware(old["hardware"], hw)
    from cifarlab import fast

    cfg = fast.get_preset(REFERENCE)
    reference = {
        "recipe": REFERENCE,
        "config": {k: v for k, v in cfg.to_config().items() if k not in ("seed", "cache_dir")},
        "train_images": math.ceil(50_000 // cfg.batch_size * cfg.epochs) * cfg.batch_size,
    }
    train_data, test_data = _load_data()

    def provenance() -> dict[str, Any]:
        import torch

        return {
            "hardware": hw,
            "torch": torch.__version__,
            "git_commit": git_sha(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "commands": [*old.get("commands", []), command] if args.append else [command],
        }

    # An ablation variant or an --append continues the runs and probes already in the file.
    base = old.get("variants", {}).get(args.ablation, {}) if args.ablation else old
    runs: list[dict[str, Any]] = list(base.get("runs", []))
    probes: list[dict[str, Any]] = list(base.get("reference", {}).get("probes", []))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if clash := sorted({r["seed"] for r in runs} & set(seeds)):
        raise SystemExit(f"seeds {clash} are already in {out}; pick another --first-seed")
    after: dict[str, Any] | None = None
    for seed in seeds:
        # Consecutive seeds share a probe: the one after a seed is the one before the next.
        before = after or probe_reference(
            train_data, test_data, args.probe_seconds, args.probe_eval_images
        )
        if after is None:
            probes.append(before)
        print(f"probe: reference {before['images_per_second']:.0f} img/s", flush=True)
        run_dir = args.runs_root / f"bench-{args.preset}-s{seed}"
        r = run_seed(args.preset, seed, run_dir, overrides)
        after = probe_reference(train_data, test_data, args.probe_seconds, args.probe_eval_images)
        own = reference_seconds(
            [before["images_per_second"], after["images_per_second"]],
            [before["eval_seconds"], after["eval_seconds"]],
            reference["train_images"],
        )
        r.update(
            probes=[before, after],
            reference_seconds=round(own, 1),
            ratio_to_own_probes=round(r["wall_seconds"] / own, 4),
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            git_commit=git_sha(),
            command=command,
        )
        runs.append(r)
        probes.append(after)
        print(
            f"seed {seed}: acc {r['test_accuracy']:.4f} (no TTA {r['test_accuracy_no_tta']:.4f}) "
            f"wall {r['wall_seconds']:.1f} s, reference {own:.0f} s -> ratio "
            f"{r['ratio_to_own_probes']:.3f}; {r['images_per_second']:.0f} img/s, "
            f"{r['gflops_per_second']:.0f} GFLOP/s",
            flush=True,
        )
        summary = summarise(args.preset, runs, probes, reference, provenance())
        if args.ablation:
            variants = {**old.get("variants", {})}
            variants[args.ablation] = {"overrides": overrides, **summary}
            old = {"preset": args.preset, "hardware": hw, "variants": variants}
            write_json_atomic(out, old)
        else:
            write_json_atomic(out, summary)
    print(
        f"{args.preset}: mean {summary['mean_accuracy']:.4f} +- {summary['std_accuracy']:.4f} "
        f"over {len(runs)} seeds, median wall {summary['median_wall_seconds']:.0f} s, reference "
        f"{summary['reference_seconds']:.0f} s, ratio {summary['ratio_to_reference']:.3f} -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
