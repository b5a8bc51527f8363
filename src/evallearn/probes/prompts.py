"""Prompt sets of the probes: the paper's concepts and the toy world's.

Lu et al. (2025) probe ten ImageNet objects and three artists. Each concept's prompt file
(``data/prompts/<key>.csv`` in kevinlu4588/WhenAreConceptsErased, columns ``prompt,seed``) is one
fixed template — "a picture of a <object>" or "a painting in the style of <Artist>" — with 500
seeds. Here the template and the concept word are data (:data:`WACE_CONCEPTS`), the seeds are the
run's seed + i, and a user who has the paper's files passes one as ``prompts_file`` to use its
exact (prompt, seed) pairs. On the toy model the concept's toy prompt set is used.

Templates are filled with :func:`prompts_for_word`, so textual inversion and UnlearnDiffAtk put a
placeholder into the same templates (never by substring replacement, whose failure silently
turned the authors' TI probe into the standard prompt for 8 of 13 concepts).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..concepts.catalogue import catalogue
from ..errors import UserError


@dataclass(frozen=True)
class WaceConcept:
    key: str
    word: str  # as it appears in the paper's prompts
    kind: str  # object | style
    imagenet_index: int | None = None  # exact ImageNet-1k class (objects)


OBJECT_TEMPLATE = "a picture of a {}"
STYLE_TEMPLATE = "a painting in the style of {}"

#: the paper's 13 concepts, from the ``paper13`` concept set (evallearn/assets/concepts, docs/concepts.md)
WACE_CONCEPTS: dict[str, WaceConcept] = {c.key: WaceConcept(c.key, c.name, c.kind, c.imagenet_index)
                                         for c in catalogue().concept_set("paper13")}


def wace_concept(name: str) -> WaceConcept | None:
    key = name.strip().lower().replace(" ", "_")
    return WACE_CONCEPTS.get(key)


def wace_retain(name: str) -> list[str]:
    """The paper's other concepts of the same kind (its interference set)."""
    c = wace_concept(name)
    if c is None:
        return []
    return [o.word for o in WACE_CONCEPTS.values() if o.kind == c.kind and o.key != c.key]


def read_prompt_file(path: str | Path) -> list[tuple[str, int]]:
    """(prompt, seed) rows of a ``prompt,seed`` CSV such as the paper's ``data/prompts/*.csv``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"prompts_file: {path} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise UserError(f"prompts_file: {path} needs a 'prompt' column (and optionally 'seed')")
        rows = []
        for i, row in enumerate(reader):
            seed = row.get("seed")
            rows.append((row["prompt"], int(seed) if seed not in (None, "") else i))
    if not rows:
        raise UserError(f"prompts_file: {path} has no rows")
    return rows


def spread(items: list, n: int) -> list:
    """At most ``n`` items spread evenly over the list, order kept (0 = all)."""
    if not n or len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def paper_concept(ctx, name: str) -> WaceConcept | None:
    """The paper's concept of that name when the run's world is open-vocabulary (a closed world's
    concepts are its own, whatever their names)."""
    return wace_concept(name) if ctx.world.open_vocabulary else None


def prompts_for_word(ctx, word: str, concept: str | None = None) -> list[str]:
    """The concept's prompt templates filled with ``word`` (the concept's name or a placeholder)."""
    concept = concept or ctx.concept.name
    own = ctx.world.word_prompts(word, concept)
    if own is not None:  # the world's own templates (a closed world's captions)
        return list(own)
    wc = paper_concept(ctx, concept)
    kind = wc.kind if wc else ctx.concept.kind
    return [(STYLE_TEMPLATE if kind == "style" else OBJECT_TEMPLATE).format(word)]


def concept_word(ctx, concept: str | None = None) -> str:
    concept = concept or ctx.concept.name
    wc = paper_concept(ctx, concept)
    return wc.word if wc else concept


def probe_items(ctx, n: int, prompts_file: str | None = None, concept: str | None = None,
                word: str | None = None) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs for ``concept`` (default: the run's). With ``word`` the
    concept's templates are filled with it instead of the concept's name."""
    if prompts_file and concept in (None, ctx.concept.name) and word is None:
        return spread(read_prompt_file(prompts_file), n)
    prompts = prompts_for_word(ctx, word or concept_word(ctx, concept), concept)
    if len(prompts) >= n:
        prompts = spread(prompts, n)
        return [(p, ctx.seed + i) for i, p in enumerate(prompts)]
    # one template (the paper's sets): the seeds make the images differ
    return [(prompts[i % len(prompts)], ctx.seed + i) for i in range(n)]


def candidates(ctx) -> list[str]:
    """Classes the scoring classifier chooses among: the concept and its retain concepts (or the
    paper's other concepts of its kind), without repeats; one alone is no choice (refused)."""
    from ..concept_sets import retain_concepts

    retain = retain_concepts(ctx) or (wace_retain(ctx.concept.name) if ctx.world.open_vocabulary else [])
    out = [concept_word(ctx)]
    for r in retain:  # the concept itself or a repeat is no alternative
        word = concept_word(ctx, r) if wace_concept(r) else r
        if word.strip().lower() not in {o.strip().lower() for o in out}:
            out.append(word)
    return out
