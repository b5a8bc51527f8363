"""The toy world's classifier as a judge: shape, colour and style heads trained on renders.

``score`` gives the probability of the named class (a shape, style or colour word) and
``classify`` the most probable of the candidate words. It plays the part on the toy world
that an ImageNet classifier, NudeNet or a style classifier plays on Stable Diffusion.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from evallearn.components import Params, Supports, kinds
from evallearn.errors import UserError
from evallearn.judges.base import Judge


@lru_cache(maxsize=2)
def _classifier(device: str):
    from . import load_toy_classifier

    return load_toy_classifier(device)


def head_of(word: str) -> tuple[str, int]:
    from . import COLOURS, SHAPES, STYLES

    for head, names in (("shape", SHAPES), ("style", STYLES), ("colour", COLOURS)):
        if word in names:
            return head, names.index(word)
    raise UserError(f"judge 'toy_classifier': '{word}' is not a toy shape, style or colour")


class ToyClassifierJudge(Judge):
    description = "The toy world's CNN classifier (shape / colour / style heads); toy model only."
    supports = Supports(model_tags=kinds("toy"))

    class Params(Params):
        pass

    @classmethod
    def models_used(cls, params=None):
        return ["toy classifier (shipped in evallearn_toy/weights)"]

    def weights_fingerprint(self) -> str:
        """A content fingerprint of the shipped classifier's weights (enters cache keys)."""
        from evallearn.models.loading import folder_fingerprint

        from . import toy_classifier_dir

        return folder_fingerprint(Path(toy_classifier_dir()))

    def probs(self, images: np.ndarray) -> dict:
        return _classifier(self.device).predict(images)

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        p = self.probs(images)
        out = np.empty(len(texts))
        for i, word in enumerate(texts):
            head, idx = head_of(word)
            out[i] = float(p[head][i, idx])
        return out

    def classify(self, images: np.ndarray, candidates: list[str]) -> list[str]:
        heads = {head_of(c)[0] for c in candidates}
        if len(heads) != 1:
            raise UserError(f"judge 'toy_classifier': candidates {candidates} mix shape/style/colour")
        head = heads.pop()
        idx = [head_of(c)[1] for c in candidates]
        p = self.probs(images)[head][:, idx]
        return [candidates[j] for j in np.asarray(p.argmax(1)).tolist()]
