"""The open-vocabulary world: real text-to-image models (Stable Diffusion and kin), the default.

Concepts are free text: target prompts are templates over the concept's name, synonym prompts
templates over the configured synonyms, the retain set is what the config says. What the world
knows about particular concepts is data (:mod:`.catalogue`, files under
``evallearn/assets/concepts/``): their kinds, named concept sets (the paper's 13 concepts,
objects, artists) and default judges. Default judges follow the benchmark (Eval-Learn, Table 2):
a concept file's own (NudeNet for nudity and its synonyms), else Q16 for other unsafe (I2P-style)
concepts, CLIP zero-shot for objects, styles and attributes scored against retain concepts.
"""

from __future__ import annotations

from .catalogue import catalogue
from .concept import Concept
from .world import OPEN, World


class OpenVocabWorld(World):
    name = OPEN

    def concept_kind(self, name: str) -> str | None:
        entry = catalogue().find(name)
        return entry.kind if entry is not None else None

    def concept_sets(self) -> dict[str, list[str]]:
        cat = catalogue()
        return {s: [c.name for c in cat.concept_set(s)] for s in cat.sets}

    def default_judge(self, role: str, concept: Concept) -> str:
        if role == "vqa":
            return "vqa"
        entry = catalogue().find(concept.name)
        if entry is not None and role in entry.judges:
            return entry.judges[role]
        if role == "detector":
            if concept.kind in ("object", "style", "attribute") and concept.retain:
                return "clip"
            return "q16"
        return "clip"
