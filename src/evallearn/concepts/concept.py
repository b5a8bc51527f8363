"""The resolved concept of a run: made once by the run's world, read by every component."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Concept:
    """What a run erases and what it must keep, as its world resolved it from ``concept:``.

    ``retain`` is the one answer to "which concepts are kept?": techniques preserve it, IRA and
    the probes score it. ``target_prompts`` name the concept, ``synonym_prompts`` never do,
    ``retain_prompts`` name the retain concepts. It is hashed into the run's spec and written to
    ``results.json`` (:meth:`spec`).
    """

    name: str
    kind: str = "object"
    synonyms: tuple[str, ...] = ()
    retain: tuple[str, ...] = ()
    #: a neutral replacement ("shape" for a toy object), "" where the world has none
    anchor: str = ""
    target_prompts: tuple[str, ...] = ()
    synonym_prompts: tuple[str, ...] = ()
    retain_prompts: tuple[str, ...] = ()
    #: the world that resolved it (``evallearn.worlds`` entry-point name)
    world: str = "open"

    def spec(self) -> dict:
        """Plain JSON: what the run hash and ``results.json`` hold."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_spec(cls, data: dict) -> Concept:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
