"""The world extension point: what a family of models knows about its concepts.

A world is registered through the ``evallearn.worlds`` entry-point group (like any component)
and is asked, never imported, by the generic code. The open-vocabulary world
(:mod:`evallearn.concepts.open_vocab`) serves every model that no other world claims.

What a world answers (every method has a default, so a world overrides only what it changes):

* :meth:`World.resolve_model`: a model ref it owns (``None``: not mine);
* :meth:`World.resolve_concept`: ``concept:`` of a config as a frozen :class:`Concept`;
* :meth:`World.concept_prompts`: target or synonym prompts of any concept name;
* :meth:`World.concept_sets` / :meth:`World.concept_set`: named, ordered concept sets a suite
  can name (the open world: ``paper13``, ``paper_objects``, ``paper_artists`` from its data
  files; the toy world: ``shapes``, ``colours``, ``styles``), each a list of concept names as a
  config's ``concept.name`` writes them; :meth:`World.concept_kind` gives each one's kind;
* :meth:`World.default_judge`: the judge a metric or probe uses for a role when none is set;
* :meth:`World.dataset_analogue`: what a named dataset (i2p, coco, tifa, ...) becomes here
  when no ``source`` is given, and :meth:`World.reference_images` for its records;
* :meth:`World.captions`: training captions of a word (SAE prompts, technique galleries);
* :meth:`World.clip_ref` / :meth:`World.clip_folder`: the CLIP that goes with its models.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .concept import Concept

if TYPE_CHECKING:
    from ..config import ConceptConfig

#: the default world's entry-point name
OPEN = "open"

#: judge roles a world names a default for
ROLES = ("classifier", "detector", "scorer", "vqa", "selector")

DEFAULT_TEMPLATES = ("a photo of a {}", "an image of a {}")
CAPTION_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}", "a {}")


class World:
    """Base class of a world; the defaults describe an open vocabulary with no data of its own."""

    name: ClassVar[str] = ""
    #: the tag the world's models carry (``Supports(model_tags=...)`` matches it); "" = none
    model_tag: ClassVar[str] = ""
    #: False for a closed world whose concepts are its own (not the paper's catalogue of real
    #: concepts, styles and ImageNet classes)
    open_vocabulary: ClassVar[bool] = True

    # -- models --------------------------------------------------------------------------------
    def resolve_model(self, ref: str):
        """The :class:`~evallearn.models.loading.ModelInfo` of ``ref`` when this world owns it,
        else ``None``. Read only configs here: ``validate`` must not load weights."""
        return None

    def clip_ref(self, model) -> str | None:
        """The CLIP ``clip_model: auto`` picks for ``model`` (``None``: the caller's default)."""
        return None

    def clip_folder(self, ref: str) -> Path | None:
        """The folder of a CLIP ref this world owns, else ``None``."""
        return None

    # -- concepts ------------------------------------------------------------------------------
    def resolve_concept(self, cfg: ConceptConfig) -> Concept:
        """The config's concept, its retain concepts and prompts as this world means them."""
        retain = tuple(cfg.retain)
        return Concept(
            name=cfg.name, kind=cfg.kind, synonyms=tuple(cfg.synonyms), retain=retain,
            target_prompts=tuple(self.concept_prompts(cfg.name, "target", synonyms=cfg.synonyms)),
            synonym_prompts=tuple(self.concept_prompts(cfg.name, "synonym", synonyms=cfg.synonyms)),
            retain_prompts=tuple(p for r in retain for p in self.concept_prompts(r, "target")),
            world=self.name or OPEN,
        )

    def concept_prompts(self, name: str, which: str, synonyms=(), templates=DEFAULT_TEMPLATES) -> list[str]:
        """``which``: ``target`` (prompts naming ``name``) or ``synonym`` (prompts through its
        ``synonyms``, never its name)."""
        words = [name] if which == "target" else list(synonyms)
        return [t.format(w) for w in words for t in templates]

    def word_prompts(self, word: str, concept: str) -> list[str] | None:
        """Prompts naming ``word`` in the templates of ``concept``'s family (a placeholder token in
        a concept's prompts), or ``None`` to use the caller's templates."""
        return None

    def concept_images(self, concept: str, n_pos: int, n_neg: int, seed: int = 0):
        """Real images of ``concept`` and of its neighbours, uint8 ``(pos [n_pos,H,W,3], neg
        [n_neg,H,W,3])``, when the world can make them (a renderer), else ``None``."""
        return None

    def owns(self, ref: str) -> bool:
        """Whether model ref ``ref`` is this world's, decided from the ref alone (no file read)."""
        return False

    def concept_kind(self, name: str) -> str | None:
        """The kind (object, style, attribute) of a concept the world defines, else ``None``."""
        return None

    def known_concepts(self) -> list[str]:
        """Concept names this world defines data for (empty: any name)."""
        return []

    def concept_sets(self) -> dict[str, list[str]]:
        """Named concept sets: set name -> concept names (as ``concept.name`` writes them), in order."""
        return {}

    def concept_set(self, name: str) -> list[str]:
        """The concepts of set ``name`` (:meth:`concept_sets`); an unknown set is a one-line
        :class:`~evallearn.errors.UserError` naming the world's sets."""
        sets = self.concept_sets()
        if name not in sets:
            from ..errors import UserError

            known = ", ".join(sorted(sets)) or "none"
            raise UserError(f"unknown concept set {name!r} for the world '{self.name or OPEN}'; known: {known}")
        return list(sets[name])

    def default_judge(self, role: str, concept: Concept) -> str:
        """The judge for ``role`` (one of :data:`ROLES`) when a metric or probe sets none."""
        return "vqa" if role == "vqa" else "clip"

    # -- datasets ------------------------------------------------------------------------------
    def dataset_analogue(self, dataset: str, concept: Concept):
        """Records (:class:`~evallearn.datasets.base.PromptRecord`) standing in for dataset
        ``dataset`` on this world's models when it has no ``source``; ``None``: none."""
        return None

    def reference_images(self, records, size: int | None = None):
        """uint8 [N, H, W, 3] reference images of analogue records, or ``None`` (not its records)."""
        return None

    def captions(self, word: str) -> list[str]:
        """Captions of images of ``word`` (technique galleries and retain sets)."""
        return [t.format(word) for t in CAPTION_TEMPLATES]

    def corpus(self, n: int, seed: int = 0) -> list[str] | None:
        """``n`` random captions from the distribution the world's models were trained on (SAE
        training prompts), or ``None`` when the world has no such corpus."""
        return None


@cache
def world_for(name: str) -> World:
    """The world registered as ``name`` (one instance per process)."""
    from .. import registry

    return registry.worlds.get(name)()


def loaded_worlds() -> Iterator[World]:
    """Every registered world, in name order, skipping one whose package does not import (a
    world that does not import owns nothing)."""
    from .. import registry

    for name in registry.worlds.names():
        try:
            yield world_for(name)
        except ImportError:
            continue


def world_of(model) -> World:
    """The world of a model: the one its ``ModelInfo.world`` names; for a model description
    without one, the world whose ``model_tag`` it carries; else the open world."""
    name = getattr(model, "world", None)
    if name:
        return world_for(name)
    tags = getattr(model, "tags", ()) or ()
    for world in loaded_worlds():
        if world.model_tag and world.model_tag in tags:
            return world
    return world_for(OPEN)


def world_owning(ref: str) -> World:
    """The world that owns model ref ``ref`` (decided from the ref alone), else the open world."""
    for world in loaded_worlds():
        if world.owns(ref):
            return world
    return world_for(OPEN)


def world_images(records, ctx=None, size: int | None = None):
    """Reference images of analogue ``records`` from the world of ``ctx``'s model, or (without a
    context) from the first registered world that recognises them; ``None`` when none does."""
    from .. import registry

    worlds = [world_of(ctx.model)] if ctx is not None else [world_for(n) for n in registry.worlds.names()]
    for world in worlds:
        out = world.reference_images(records, size)
        if out is not None:
            return out
    return None


def concept_for(ctx) -> Concept:
    """The run's resolved concept (``ctx.concept``)."""
    return ctx.concept
