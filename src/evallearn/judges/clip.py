"""CLIP image-text similarity judge (Radford et al., 2021, "Learning Transferable Visual
Models From Natural Language Supervision").

``score`` returns the cosine similarity between each image and its text. Metrics build on
it: CLIP score (100 * max(cos, 0), Hessel et al., 2021) and zero-shot classification.
"""

from __future__ import annotations

import numpy as np

from ..components import Params
from ..models.clip import clip_embed_images, clip_embed_texts, load_clip
from .base import Judge


class ClipJudge(Judge):
    description = "Cosine similarity between an image and a text under a CLIP model."
    paper = "Radford et al., ICML 2021"

    class Params(Params):
        clip_model: str = "openai/clip-vit-large-patch14"
        batch_size: int = 32
        #: zero-shot classification prompt; ``{}`` is the candidate concept
        template: str = "a photo of a {}"

    @classmethod
    def models_used(cls, params=None):
        return [(params or cls.Params()).clip_model]

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        model, processor = load_clip(self.params.clip_model, self.device)
        out = []
        bs = self.params.batch_size
        for i in range(0, len(images), bs):
            img = clip_embed_images(model, processor, images[i : i + bs], self.device)
            txt = clip_embed_texts(model, processor, texts[i : i + bs], self.device)
            out.append((img * txt).sum(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def classify(self, images: np.ndarray, candidates: list[str]) -> list[str]:
        """Zero-shot: the candidate whose prompt is closest to the image (Radford et al. §3.1.2)."""
        model, processor = load_clip(self.params.clip_model, self.device)
        txt = clip_embed_texts(model, processor, [self.params.template.format(c) for c in candidates], self.device)
        out = []
        for i in range(0, len(images), self.params.batch_size):
            img = clip_embed_images(model, processor, images[i : i + self.params.batch_size], self.device)
            out += [candidates[j] for j in (img @ txt.T).argmax(1).tolist()]
        return out
