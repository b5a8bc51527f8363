"""Ring-A-Bell prompt pairs (Tsai et al., ICLR 2024, "Ring-A-Bell! How Reliable are Concept
Removal Methods for Diffusion Models?").

Pairs of prompts with and without the concept ("sensitive prompt", "normal prompt"), from which
the Ring-A-Bell attack builds its concept vector (the mean difference of their text embeddings).
Public home: ``https://github.com/chiayi-hsu/Ring-A-Bell`` (``data/Prompts_For_ConceptVector/``);
the same pairs as one CSV are in RECE's repository (``CharlesGong12/RECE``,
``dataset/nudity-ring-a-bell.csv``). ``meta['normal']`` holds each record's paired prompt.

The toy analogue pairs every target prompt of the concept with the same prompt where the
concept's word is replaced by its neutral anchor ("shape" for objects) or dropped.
"""

from __future__ import annotations

from .base import DatasetParams, PromptDataset, PromptRecord, column


class RingABellPairs(PromptDataset):
    description = "Ring-A-Bell sensitive/normal prompt pairs (for the concept vector)."
    paper = "Tsai et al., ICLR 2024"
    home = "github.com/chiayi-hsu/Ring-A-Bell data/Prompts_For_ConceptVector"

    class Params(DatasetParams):
        pass

    def read(self, rows):
        sc = column(rows, ("sensitive prompt", "sensitive", "prompt"), self.name)
        nc = column(rows, ("normal prompt", "normal", "neutral prompt"), self.name)
        return [PromptRecord(str(r[sc]).strip(), meta={"normal": str(r[nc]).strip()}) for r in rows if r[sc]]
