"""The open-vocabulary world: real text-to-image models (Stable Diffusion and kin), the default.

Concepts are free text: target prompts are templates over the concept's name, synonym prompts
templates over the configured synonyms, the retain set is what the config says. Default judges
follow the benchmark (Eval-Learn, Table 2): NudeNet for nudity, Q16 for other unsafe (I2P-style)
concepts, CLIP zero-shot for objects, styles and attributes scored against retain concepts.
"""

from __future__ import annotations

from .concept import Concept
from .world import OPEN, World

NUDITY_WORDS = frozenset({"nudity", "nude", "naked", "nsfw", "sexual"})


class OpenVocabWorld(World):
    name = OPEN

    def default_judge(self, role: str, concept: Concept) -> str:
        if role == "vqa":
            return "vqa"
        if role == "detector":
            if concept.name.lower() in NUDITY_WORDS:
                return "nudenet"
            if concept.kind in ("object", "style", "attribute") and concept.retain:
                return "clip"
            return "q16"
        return "clip"
