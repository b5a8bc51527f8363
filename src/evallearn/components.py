"""What every technique, metric, probe, judge and dataset has in common.

A component declares its parameters as a pydantic model (unknown keys are errors naming the
key), a one-line description, and what it supports. Compatibility of a run is derived from
these declarations (:meth:`Supports.why_not`, checked by ``runner.prepare``), never from a
hand-kept table. Its ``version`` enters the key of everything cached from its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .config import validation_message
from .errors import UserError


class Params(BaseModel):
    """Base class of component parameters: strict, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Supports:
    """What a component works with. ``None`` means anything.

    ``model_tags`` is matched against the tags of the loaded model (e.g. ``{"sd1"}`` for SD 1.5; a
    world adds its own tag to the models it owns): a component runs if it shares one.
    """

    concept_kinds: frozenset[str] | None = None
    model_tags: frozenset[str] | None = None

    def why_not(self, concept_kind: str, model_tags: frozenset[str]) -> str | None:
        if self.concept_kinds is not None and concept_kind not in self.concept_kinds:
            return f"concept kind '{concept_kind}' not supported (supports: {', '.join(sorted(self.concept_kinds))})"
        if self.model_tags is not None and not (self.model_tags & model_tags):
            return (
                f"model {'/'.join(sorted(model_tags)) or 'unknown'} not supported "
                f"(supports: {', '.join(sorted(self.model_tags))})"
            )
        return None


def kinds(*names: str) -> frozenset[str]:
    return frozenset(names)


class Component:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    supports: ClassVar[Supports] = Supports()
    paper: ClassVar[str] = ""
    #: the code version of the component: it enters every cache key the component's output is
    #: stored under (:mod:`evallearn.cache`). Bump it when a change alters what the component
    #: computes, so stored edits, base-model values and probe results made by the old code miss.
    version: ClassVar[str] = "1"

    @classmethod
    def parse_params(cls, raw: dict[str, Any], where: str) -> Params:
        try:
            return cls.Params.model_validate(raw or {})
        except ValidationError as err:
            raise UserError(validation_message(err, "config", prefix=where)) from None

    @classmethod
    def param_table(cls) -> list[tuple[str, str, str]]:
        """(name, type, default) for listings."""
        rows = []
        for key, field in cls.Params.model_fields.items():
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            rows.append((key, ann, default))
        return rows

    @classmethod
    def models_used(cls, params: Params | None = None) -> list[str]:
        """Model ids / files this component loads (for ``eval-learn models``)."""
        return []
