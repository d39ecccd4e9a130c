"""Subcommands for the eval area (placeholder until that area lands)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    del sub
