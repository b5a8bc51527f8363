"""Where metrics get their concept prompts: the toy world's prompt sets on the toy model,
templates over the concept's name, synonyms and retain concepts elsewhere."""

from __future__ import annotations

from ..concept_sets import is_toy, retain_concepts  # noqa: F401  (re-exported for the metrics)
from ..context import RunContext

DEFAULT_TEMPLATES = ("a photo of a {}", "an image of a {}")


def concept_prompts(ctx: RunContext, concept: str, which: str, templates=DEFAULT_TEMPLATES) -> list[str]:
    """``which``: ``target`` (names the concept) or ``synonym`` (never names it)."""
    if is_toy(ctx):
        from ..toyworld import toy_concept

        c = toy_concept(concept)
        return list(c.target_prompts if which == "target" else c.synonym_prompts)
    words = [concept] if which == "target" else list(ctx.concept.synonyms if concept == ctx.concept.name else ())
    return [t.format(w) for w in words for t in templates]
