"""Model registry: a name -> builder table filled by the `@register_model` decorator.

    python -c "from cifarlab.models import list_models; print(list_models())"

Every registered model takes a float tensor `(B, 3, 32, 32)` normalised with the CIFAR-10
mean/std of `cifarlab.constants` (see `cifarlab.preprocess`) and returns logits `(B, 10)`.
Models that need another resolution or normalisation (ImageNet transfer) convert inside
`forward`, so that export and serving see one input contract for every model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cifarlab.errors import CifarlabError

_REGISTRY: dict[str, Callable[..., Any]] = {}

F = TypeVar("F", bound=Callable[..., Any])


class UnknownModelError(CifarlabError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_model(fn: F) -> F:
    """Register `fn` under its own name; the name is what `get_model` and the CLI take."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> Any:
    """Build the registered model `name`; unknown names list the known ones."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models()) or "(none registered)"
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {known}. "
            "Pick one of those names (see `cifarlab train --help`)."
        ) from None
    return builder(**kwargs)
