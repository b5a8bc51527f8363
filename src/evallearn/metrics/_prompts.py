"""Where metrics get their concept prompts: the toy world's prompt sets on the toy model,
templates over the concept's name, synonyms and retain concepts elsewhere."""

from __future__ import annotations

from ..context import RunContext

DEFAULT_TEMPLATES = ("a photo of a {}", "an image of a {}")


def is_toy(ctx: RunContext) -> bool:
    return "toy" in ctx.model.tags


def retain_concepts(ctx: RunContext) -> list[str]:
    if ctx.concept.retain:
        return list(ctx.concept.retain)
    if is_toy(ctx):
        from ..toyworld import toy_concept

        return list(toy_concept(ctx.concept.name).retain_concepts)
    return []


def concept_prompts(ctx: RunContext, concept: str, which: str, templates=DEFAULT_TEMPLATES) -> list[str]:
    """``which``: ``target`` (names the concept) or ``synonym`` (never names it)."""
    if is_toy(ctx):
        from ..toyworld import toy_concept

        c = toy_concept(concept)
        return list(c.target_prompts if which == "target" else c.synonym_prompts)
    words = [concept] if which == "target" else list(ctx.concept.synonyms if concept == ctx.concept.name else ())
    return [t.format(w) for w in words for t in templates]
