"""Seeded sampling helpers shared by the probes.

Initial latents are drawn per (prompt, seed) from a CPU ``torch.Generator(seed)`` exactly as
diffusers draws them for a list of generators, so a probe image and the standard prompt's image
with the same seed start from the same noise. Step noise (η > 0) comes from a second generator
seeded from the same seed and passed to the pipeline, so it is reproducible too (the authors'
classifier-guided noise path drew it from the unseeded global CUDA RNG).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from ..generation import to_uint8
from ..models.sampling import initial_latents, seed_generators, vae_posterior

if TYPE_CHECKING:
    import torch


def step_generators(seeds: Sequence[int], offset: int = 1) -> list[torch.Generator]:
    return seed_generators(seeds, offset)


@contextmanager
def own_scheduler(*pipes) -> Iterator[None]:
    """Put back each pipeline's scheduler when the block ends (a probe swaps in its subclasses;
    the run's pipelines keep their own, so no one has to restore them later)."""
    kept = [(pipe, pipe.scheduler) for pipe in pipes]
    try:
        yield
    finally:
        for pipe, sched in kept:
            pipe.scheduler = sched


def run(pipe, items, scheduler, *, latents=None, output_type: str = "np", **kwargs) -> np.ndarray | torch.Tensor:
    """Call ``pipe`` on (prompt, seed) items with ``scheduler`` and fixed initial latents (the
    pipeline's own scheduler is put back afterwards)."""
    prompts = [p for p, _ in items]
    seeds = [s for _, s in items]
    if latents is None:
        latents = initial_latents(pipe, seeds, kwargs["height"], kwargs["width"])
    with own_scheduler(pipe):
        pipe.scheduler = scheduler
        out = pipe(prompt=prompts, latents=latents, generator=step_generators(seeds), output_type=output_type,
                   **kwargs)
    if output_type == "latent":
        return out.images
    return to_uint8(np.asarray(out.images))


def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    import torch

    with torch.no_grad():
        img = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return to_uint8((img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy())


def encode(pipe, images: np.ndarray, sample: bool = False, generator=None) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> scaled VAE latents (posterior mean, or a sample)."""
    import torch

    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    dist = vae_posterior(pipe.vae, x.to(pipe.device, pipe.vae.dtype))
    with torch.no_grad():
        z = dist.sample(generator) if sample else dist.mean
    return z * pipe.vae.config.scaling_factor
