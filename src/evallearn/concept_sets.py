"""Which concepts a run keeps: the concept sets that techniques, metrics and probes all read.

This sits below the components so that a technique can ask "which concepts must I preserve?"
without importing the metrics that will score it.
"""

from __future__ import annotations

from .context import RunContext


def is_toy(ctx: RunContext) -> bool:
    """True when the run's model is the toy world's."""
    return "toy" in ctx.model.tags


def retain_concepts(ctx: RunContext) -> list[str]:
    """The config's ``concept.retain``; on the toy model, when none is given, the toy world's
    retain set for the concept (its other shapes); otherwise empty."""
    if ctx.concept.retain:
        return list(ctx.concept.retain)
    if is_toy(ctx):
        from .toyworld import toy_concept

        return list(toy_concept(ctx.concept.name).retain_concepts)
    return []
