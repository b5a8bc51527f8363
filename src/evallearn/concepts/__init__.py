"""Concepts and the worlds that resolve them.

A :class:`~.world.World` knows what a model's concepts mean: it owns some model refs, turns a
configured concept into a frozen :class:`~.concept.Concept` (prompts, synonyms, retain set,
anchor), names the default judge for each role and gives the stand-in for a named dataset on its
models. The open-vocabulary world (:mod:`.open_vocab`, real Stable Diffusion) is the default;
other worlds register through the ``evallearn.worlds`` entry-point group.
"""

from .concept import Concept
from .world import OPEN, World, concept_for, world_for, world_of

__all__ = ["OPEN", "Concept", "World", "concept_for", "world_for", "world_of"]
