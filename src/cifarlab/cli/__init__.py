"""The `cifarlab` command line: the only place that prints.

    cifarlab --help
    cifarlab data prepare --source ../shared/datasets/cifar-10-batches-bin

Each area registers its subcommands from its own module here; heavy imports (torch,
onnxruntime) happen inside the handlers so that `cifarlab serve` never pulls in torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cifarlab import __version__
from cifarlab.cli import (
    data_cmds,
    eval_cmds,
    fast_cmds,
    render_cmds,
    robust_cmds,
    serve_cmds,
    train_cmds,
)
from cifarlab.errors import CifarlabError

_AREAS = (data_cmds, train_cmds, eval_cmds, fast_cmds, robust_cmds, serve_cmds, render_cmds)


class CLIError(CifarlabError):
    """A problem with the command line the user can fix; printed without a traceback, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarlab",
        description="CIFAR-10 classification from data to deployment.",
    )
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in _AREAS:
        area.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Library code raises errors whose message says what went wrong and how to fix it;
        # those are expected and printed plainly. Anything else is a bug: show the traceback.
        if getattr(exc, "user_facing", False):  # CifarlabError, CLIError among them
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
