"""Registries of components by name: techniques, metrics, probes, judges, datasets, attacks and
the command-line commands.

Built-in components are declared as entry points in our own ``pyproject.toml`` (groups
``evallearn.techniques``, ``evallearn.metrics``, ..., ``evallearn.attacks``, ``evallearn.cli``),
exactly as an outside package declares its own, so there is one discovery path and no hand-kept
list. Entries are loaded lazily: a component's module is imported the first time it is asked for,
so listing names imports nothing heavy.

Each registry is typed: a loaded entry must be a subclass of the registry's base class (given as
``"module:Class"`` so that this module imports no component code), and two entry points that
give one name to different objects are refused with a one-line error naming both sources, in the
manner of lm-evaluation-harness' ``Registry(base_cls=...)``. :meth:`Registry.register` adds a
component in-process (tests, notebooks) under the same rules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


def _source(ep: metadata.EntryPoint) -> str:
    """``value (distribution version)`` for error messages."""
    dist = getattr(ep, "dist", None)
    where = f" from {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    return f"'{ep.value}'{where}"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """Components of one ``kind`` found in the entry-point ``group``.

    ``base``: the class every entry must subclass, as ``"module:Class"`` (imported on the first
    load, never at construction) or the class itself; ``None`` accepts any object.
    """

    def __init__(self, kind: str, group: str, base: str | type | None = None) -> None:
        self.kind = kind
        self.group = group
        self._base = base
        self._loaded: dict[str, T] = {}
        self._registered: set[str] = set()
        self._entry_points: dict[str, metadata.EntryPoint] | None = None
        self._collisions: dict[str, str] = {}

    # -- discovery -----------------------------------------------------------------------------

    def _eps(self) -> dict[str, metadata.EntryPoint]:
        if self._entry_points is None:
            found: dict[str, metadata.EntryPoint] = {}
            collisions: dict[str, str] = {}
            for ep in metadata.entry_points(group=self.group):
                other = found.get(ep.name)
                if other is None:
                    found[ep.name] = ep
                elif other.value != ep.value:  # the same target declared twice is one entry
                    collisions[ep.name] = (f"{self.kind} '{ep.name}' is declared by two entry points in group "
                                           f"'{self.group}': {_source(other)} and {_source(ep)}; "
                                           f"uninstall or rename one")
            self._entry_points, self._collisions = found, collisions
        return self._entry_points

    def refresh(self) -> None:
        """Forget cached entry points (after installing a plugin in the same process)."""
        self._entry_points = None
        self._collisions = {}
        for name in [n for n in self._loaded if n not in self._registered]:
            del self._loaded[name]

    def base(self) -> type | None:
        if isinstance(self._base, str):
            module, _, attr = self._base.partition(":")
            self._base = getattr(importlib.import_module(module), attr)
        return self._base

    def _check(self, name: str, obj: Any, source: str) -> T:
        base = self.base()
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise UserError(f"{self.kind} '{name}' ({source}) is not a subclass of "
                            f"{base.__module__}.{base.__qualname__}")
        if base is not None:
            declared = obj.__dict__.get("name")
            if declared and declared != name:
                raise UserError(f"{self.kind} '{name}' ({source}) declares name '{declared}'; the entry-point "
                                f"name and the class's `name` must agree")
            obj.name = name
        return obj

    # -- in-process registration ---------------------------------------------------------------

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: add ``obj`` under ``name`` (default: its ``name``); a name that another
        object already holds, here or through an entry point, is refused."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", "")
            if not key:
                raise UserError(f"{self.kind} {_qualname(obj)}: register it with a name")
            held = self._loaded.get(key)
            if held is not None and held is not obj:
                raise UserError(f"{self.kind} '{key}' is already registered ({_qualname(held)}); "
                                f"cannot register {_qualname(obj)} under the same name")
            ep = self._eps().get(key)
            if held is None and ep is not None:
                raise UserError(f"{self.kind} '{key}' is already declared by the entry point {_source(ep)}; "
                                f"cannot register {_qualname(obj)} under the same name")
            self._loaded[key] = self._check(key, obj, _qualname(obj))
            self._registered.add(key)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._loaded.pop(name, None)
        self._registered.discard(name)

    # -- lookup --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(set(self._loaded) | set(self._eps()))

    def __contains__(self, name: str) -> bool:
        return name in self._loaded or name in self._eps()

    def entry_point(self, name: str) -> metadata.EntryPoint | None:
        return self._eps().get(name)

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        ep = self._eps().get(name)
        if ep is None:
            known = ", ".join(self.names()) or "none"
            raise UserError(f"unknown {self.kind} '{name}'; known: {known}")
        if name in self._collisions:
            raise UserError(self._collisions[name])
        obj = self._check(name, ep.load(), _source(ep))
        self._loaded[name] = obj
        return obj

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]


techniques: Registry[Any] = Registry("technique", "evallearn.techniques", base="evallearn.techniques.base:Technique")
metrics: Registry[Any] = Registry("metric", "evallearn.metrics", base="evallearn.metrics.base:Metric")
probes: Registry[Any] = Registry("probe", "evallearn.probes", base="evallearn.probes.base:Probe")
judges: Registry[Any] = Registry("judge", "evallearn.judges", base="evallearn.judges.base:Judge")
datasets: Registry[Any] = Registry("dataset", "evallearn.datasets", base="evallearn.datasets.base:PromptDataset")
attacks: Registry[Any] = Registry("attack", "evallearn.attacks", base="evallearn.attacks.base:Attack")
#: worlds: what a family of models knows about its concepts (evallearn.concepts.world)
worlds: Registry[Any] = Registry("world", "evallearn.worlds", base="evallearn.concepts.world:World")
#: ``eval-learn`` sub-commands: a ``typer.Typer`` (a command group, or one command) or a function
commands: Registry[Any] = Registry("command", "evallearn.cli")

#: the component registries, by kind (what ``eval-learn techniques`` etc. list)
ALL = {"technique": techniques, "metric": metrics, "probe": probes, "judge": judges, "dataset": datasets,
       "attack": attacks}
