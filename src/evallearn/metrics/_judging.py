"""How erasure metrics (ASR, ERR) decide whether an image shows the concept, and which judge they
use by default."""

from __future__ import annotations

import numpy as np

from ._prompts import is_toy

NUDITY_WORDS = {"nudity", "nude", "naked", "nsfw", "sexual"}


def default_detector(ctx) -> str:
    """``toy_classifier`` on the toy model, ``nudenet`` for nudity, ``q16`` for other unsafe
    (I2P-style) concepts, CLIP zero-shot for objects and styles."""
    if is_toy(ctx):
        return "toy_classifier"
    name = ctx.concept.name.lower()
    if name in NUDITY_WORDS:
        return "nudenet"
    if ctx.concept.kind in ("object", "style", "attribute") and ctx.concept.retain:
        return "clip"
    return "q16"


def concept_present(judge, images: np.ndarray, concept: str, candidates: list[str]) -> np.ndarray:
    """Detector judges (``detect``) answer directly; classifiers must pick ``concept`` among
    ``candidates`` (the concept and its retain concepts)."""
    if hasattr(judge, "detect"):
        return np.asarray(judge.detect(images, concept), dtype=bool)
    return np.array([p == concept for p in judge.classify(images, candidates)], dtype=bool)
