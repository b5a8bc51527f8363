"""CLIP image-text similarity judge (Radford et al., 2021, "Learning Transferable Visual
Models From Natural Language Supervision").

``score`` returns the cosine similarity between each image and its text. Metrics build on
it: CLIP score (100 * max(cos, 0), Hessel et al., 2021), zero-shot classification, and the probes'
``clip_score`` (100 * cos with ViT-B/32 and "a photo of a <concept>": ``logits_per_image`` of
OpenAI's CLIP, whose logit scale is 100, as Lu et al., 2025 report it).
"""

from __future__ import annotations

import numpy as np

from ..components import Params
from ..errors import UserError
from ..models.clip import clip_embed_images, clip_embed_texts, clip_folder, load_clip
from ..models.loading import folder_fingerprint
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

    def weights_fingerprint(self) -> str:
        """A content hash of the CLIP folder: it enters cache keys, so other weights under the same
        ref (a retrained folder, another snapshot) never reuse values scored with these."""
        return folder_fingerprint(clip_folder(self.params.clip_model))

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
        """Zero-shot: the candidate whose prompt is closest to the image (Radford et al. §3.1.2).

        A forced choice: every image gets one of ``candidates``, so it needs at least two (with
        one, every image, noise included, would be "classified" as it)."""
        if len(set(candidates)) < 2:
            raise UserError(f"judge 'clip': a zero-shot choice needs at least two different candidates, got "
                            f"{list(candidates)}; give the concept's alternatives (concept.retain)")
        model, processor = load_clip(self.params.clip_model, self.device)
        txt = clip_embed_texts(model, processor, [self.params.template.format(c) for c in candidates], self.device)
        out = []
        for i in range(0, len(images), self.params.batch_size):
            img = clip_embed_images(model, processor, images[i : i + self.params.batch_size], self.device)
            out += [candidates[j] for j in (img @ txt.T).argmax(1).tolist()]
        return out
