"""Deferred torch: component modules import torch inside the functions that compute, so that
planning a run (``eval-learn validate``), ``--version`` and ``compare`` never load it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def no_grad(fn: F) -> F:
    """``@torch.no_grad()`` that imports torch when ``fn`` is called, not when it is defined."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
