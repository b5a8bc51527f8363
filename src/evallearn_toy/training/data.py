"""Training data of the toy trainer: rendered images and the text-to-image stage's captioned
batches (every draw from the generator it is given)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evallearn.models.text import tokenize

from ..concepts import caption_for
from ..render import render_dataset

#: fraction of captions replaced by the empty prompt (classifier-free guidance, Ho & Salimans 2022)
CAPTION_DROPOUT = 0.1


def render_training_set(n: int, seed: int, workers: int = 2, tinted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` images of data set ``seed`` (deterministic, chunked over processes)."""
    if workers <= 1 or n < 2000:
        return render_dataset(n, seed, tinted=tinted)
    from concurrent.futures import ProcessPoolExecutor

    chunks = [(start, min(n, start + 5000)) for start in range(0, n, 5000)]
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_render_chunk, [(b - a, seed, a, tinted) for a, b in chunks]))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _render_chunk(args):
    n, seed, start, tinted = args
    return render_dataset(n, seed, start=start, tinted=tinted)


def cached_training_set(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training renders from ``path`` (``.npz``) when it exists, else rendered and saved there."""
    if path.exists():
        d = np.load(path)
        return d["images"], d["labels"]
    images, labels = render_training_set(n, seed)
    np.savez(path, images=images, labels=labels)
    return images, labels


def empty_prompt_ids(tokenizer) -> torch.Tensor:
    """Token ids ``[77]`` of the empty prompt (what a dropped caption becomes)."""
    return tokenize(tokenizer, [""]).input_ids[0]


def caption_batch(labels: np.ndarray, n_items: int, batch: int, tokenizer, empty_ids: torch.Tensor,
                  rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """``batch`` distinct item indices and the token ids ``[batch, 77]`` of a random caption of each
    (:func:`~evallearn_toy.concepts.caption_for`), :data:`CAPTION_DROPOUT` of them replaced by the
    empty prompt; all draws from ``rng``."""
    idx = rng.choice(n_items, size=batch, replace=False)
    caps = [caption_for(labels[i], rng) for i in idx]
    ids = tokenize(tokenizer, caps).input_ids
    drop = torch.from_numpy(rng.random(batch) < CAPTION_DROPOUT)
    ids[drop] = empty_ids
    return idx, ids
