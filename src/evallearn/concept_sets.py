"""Which concepts a run keeps: the concept sets that techniques, metrics and probes all read.

This sits below the components so that a technique can ask "which concepts must I preserve?"
without importing the metrics that will score it. The answer is the run's resolved concept
(``ctx.concept``, made once by the model's world in ``prepare()``).
"""

from __future__ import annotations

from .context import RunContext


def retain_concepts(ctx: RunContext) -> list[str]:
    """The concepts the run keeps: ``ctx.concept.retain`` as the model's world resolved it (the
    config's ``concept.retain``, or the world's own retain set for the concept when none is given)."""
    return list(ctx.concept.retain)


def concept_prompts(ctx: RunContext, concept: str, which: str, templates=None) -> list[str]:
    """``which``: ``target`` (prompts naming ``concept``) or ``synonym`` (never naming it), as the
    model's world writes them; the run's own concept's come from ``ctx.concept``."""
    c = ctx.concept
    if concept == c.name and templates is None:
        own = c.target_prompts if which == "target" else c.synonym_prompts
        if own or (which == "synonym" and c.target_prompts):
            return list(own)
    kw = {"templates": templates} if templates is not None else {}
    synonyms = c.synonyms if concept == c.name else ()
    return ctx.world.concept_prompts(concept, which, synonyms=synonyms, **kw)


def default_judge(ctx: RunContext, role: str) -> str:
    """The judge the model's world names for ``role`` (classifier, detector, scorer, vqa, selector)."""
    return ctx.world.default_judge(role, ctx.concept)
