"""Registries of components by name: techniques, metrics, probes, judges, datasets.

Built-in components are declared as entry points in our own ``pyproject.toml`` (groups
``evallearn.techniques``, ``evallearn.metrics``, ...), exactly as an outside package declares
its own, so there is one discovery path and no hand-kept list. Entries are loaded lazily: a
component's module is imported the first time it is asked for. :meth:`Registry.register`
adds a component in-process (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from .errors import UserError


class Registry:
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._loaded: dict[str, Any] = {}
        self._entry_points: dict[str, metadata.EntryPoint] | None = None

    def _eps(self) -> dict[str, metadata.EntryPoint]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in metadata.entry_points(group=self.group)}
        return self._entry_points

    def refresh(self) -> None:
        """Forget cached entry points (after installing a plugin in the same process)."""
        self._entry_points = None

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            key = name or obj.name
            obj.name = key
            self._loaded[key] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return sorted(set(self._loaded) | set(self._eps()))

    def get(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        ep = self._eps().get(name)
        if ep is None:
            known = ", ".join(self.names()) or "none"
            raise UserError(f"unknown {self.kind} '{name}'; known: {known}")
        obj = ep.load()
        obj.name = name
        self._loaded[name] = obj
        return obj

    def items(self) -> list[tuple[str, Any]]:
        return [(n, self.get(n)) for n in self.names()]


techniques = Registry("technique", "evallearn.techniques")
metrics = Registry("metric", "evallearn.metrics")
probes = Registry("probe", "evallearn.probes")
judges = Registry("judge", "evallearn.judges")
datasets = Registry("dataset", "evallearn.datasets")

ALL = {"technique": techniques, "metric": metrics, "probe": probes, "judge": judges, "dataset": datasets}
