"""Subcommands of the data area: `data prepare`, `data info` and `eda`.

cifarlab data prepare --source ../shared/datasets/cifar-10-batches-bin
cifarlab data info
cifarlab eda --out reports
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cifarlab import data


def register(sub: Any) -> None:
    p_data = sub.add_parser(
        "data",
        help="obtain, verify and cache CIFAR-10",
        description="Obtain, verify and cache the CIFAR-10 binary version.",
    )
    data_sub = p_data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = data_sub.add_parser(
        "prepare",
        help="download or read CIFAR-10, verify checksums, split and cache it",
        description=(
            "Build the verified cache of CIFAR-10 (train 40,000 / val 10,000 / test 10,000). "
            f"Source: --source, else ${data.ENV_SOURCE}, else download the official archive. "
            "A second run only re-checks the cache."
        ),
    )
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help=(
            "folder of the extracted files (cifar-10-batches-bin) or cifar-10-binary.tar.gz "
            f"(default: ${data.ENV_SOURCE}, else download)"
        ),
    )
    _cache_arg(p)
    p.add_argument(
        "--url", default=None, help=f"archive to download (default: {data.OFFICIAL_URL})"
    )
    p.add_argument("--force", action="store_true", help="rebuild the cache even if it is valid")
    p.add_argument("--no-progress", action="store_true", help="hide the download progress bar")
    p.set_defaults(func=_prepare)

    p = data_sub.add_parser(
        "info",
        help="show where the cache is and what it holds",
        description="Print the cache location, counts, split and checksums as JSON.",
    )
    _cache_arg(p)
    p.add_argument("--verify", action="store_true", help="also re-hash every cached file")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "eda",
        help="write EDA figures and eda.json from the prepared data",
        description=(
            "Write sample_per_class.png, class_distribution.png and channels_distribution.png "
            "into OUT/figures/ and the counts and channel statistics into OUT/eda.json."
        ),
    )
    _cache_arg(p)
    p.add_argument(
        "--out", type=Path, default=Path("reports"), help="output folder (default: reports)"
    )
    p.set_defaults(func=_eda)


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache folder (default: ${data.ENV_CACHE}, else the user cache dir)",
    )


def _prepare(args: argparse.Namespace) -> int:
    path = data.prepare(
        args.source,
        args.cache_dir,
        url=args.url,
        force=args.force,
        progress=not args.no_progress,
    )
    counts = data.read_manifest(path)["counts"]
    print(
        f"CIFAR-10 ready in {path}: train {counts['train']:,}, val {counts['val']:,}, "
        f"test {counts['test']:,} (train_full {counts['train_full']:,})"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    info = data.describe(args.cache_dir)
    if args.verify:
        data.verify_cache(Path(info["path"]))
        info["verified"] = True
    print(json.dumps(info, indent=2))
    return 0


def _eda(args: argparse.Namespace) -> int:
    from cifarlab import eda  # matplotlib is a training-side dependency

    written = eda.run(args.out, args.cache_dir)
    for path in written:
        print(path)
    return 0
