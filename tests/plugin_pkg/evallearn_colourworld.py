"""A second, minimal world for the tests: two colours, a stub renderer and classifier.

It plugs in through entry points only (``evallearn.worlds`` and ``evallearn.judges``); its model
ref ``colours`` is the tiny random pipeline, and its judge calls an image red or blue by its mean
red and blue channels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from evallearn.components import Params, Supports, kinds
from evallearn.concepts import Concept, World
from evallearn.judges.base import Judge

COLOURS = ("red", "blue")


def render(colour: str, size: int = 16) -> np.ndarray:
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0 if colour == "red" else 2] = 255
    return img


class ColourWorld(World):
    model_tag = "colours"
    open_vocabulary = False

    def owns(self, ref):
        return ref == "colours"

    def resolve_model(self, ref):
        if ref != "colours":
            return None
        from evallearn.models.loading import inspect_folder, tiny_random_dir

        info = inspect_folder(ref, tiny_random_dir("pipeline"))
        return replace(info, tags=info.tags | {self.model_tag}, default_guidance=2.0, world=self.name)

    def known_concepts(self):
        return list(COLOURS)

    def concept_prompts(self, name, which, synonyms=(), templates=()):
        return [f"a {name} square", f"a {name} picture"] if which == "target" else [f"something {name}-ish"]

    def resolve_concept(self, cfg):
        retain = tuple(cfg.retain) or tuple(c for c in COLOURS if c != cfg.name)
        return Concept(name=cfg.name, kind=cfg.kind, retain=retain,
                       target_prompts=tuple(self.concept_prompts(cfg.name, "target")),
                       synonym_prompts=tuple(self.concept_prompts(cfg.name, "synonym")),
                       retain_prompts=tuple(p for r in retain for p in self.concept_prompts(r, "target")),
                       world=self.name)

    def default_judge(self, role, concept):
        return "colour_judge"

    def concept_images(self, concept, n_pos, n_neg, seed=0):
        other = next(c for c in COLOURS if c != concept)
        return np.stack([render(concept)] * n_pos), np.stack([render(other)] * n_neg)


class ColourJudge(Judge):
    description = "Red or blue by the mean red and blue channels (the colours world's stub classifier)."
    supports = Supports(model_tags=kinds("colours"))

    class Params(Params):
        pass

    def score(self, images, texts):
        img = np.asarray(images, dtype=np.float64)
        return np.array([img[i, ..., 0 if t == "red" else 2].mean() / 255 for i, t in enumerate(texts)])

    def classify(self, images, candidates):
        img = np.asarray(images, dtype=np.float64)
        red, blue = img[..., 0].mean(axis=(1, 2)), img[..., 2].mean(axis=(1, 2))
        return [("red" if r >= b else "blue") if {"red", "blue"} <= set(candidates) else candidates[0]
                for r, b in zip(red, blue, strict=True)]
