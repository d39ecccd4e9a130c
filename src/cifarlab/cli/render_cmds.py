"""`cifarlab render`: fill the marked number blocks of the docs from committed JSON.

cifarlab render            # rewrite README.md, docs/*.md, reports/NOTES.md, REPORT.md
cifarlab render --check    # exit 1 if any of them no longer matches its JSON
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    r = sub.add_parser(
        "render",
        help="render the numbers in README/docs/REPORT.md from the committed JSON",
        description=(
            "Re-render every <!-- bench:NAME:start/end --> block and reports/REPORT.md from "
            "the JSON under reports/ (see cifarlab.render for how to add a number)."
        ),
    )
    r.add_argument("--root", default=".", help="repository root (default: current folder)")
    r.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    r.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    from cifarlab.render import render

    changed = render(args.root, check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'rendered'}: {path}")
    if args.check and changed:
        print("run `cifarlab render` and commit the result")
        return 1
    if not changed:
        print("every rendered block matches its JSON")
    return 0
