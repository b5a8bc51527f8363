"""Diffusion-completion probe of Lu et al. (2025, "When Are Concepts Erased From Diffusion
Models?", arXiv:2505.17013; ``probe_notebooks/diffusion-completion.ipynb`` in
kevinlu4588/WhenAreConceptsErased).

The base model runs the first k DDIM steps of the concept prompt and hands its partially
denoised latent to the erased model, which finishes the *same* schedule from step k. Where the
concept survives even after a few base steps, the erased model only avoids starting it. Both
halves are DDIM (η = 0) from the same seeded initial latents, sliced out of one schedule by
:class:`~._schedulers.SlicedDDIMScheduler` (the authors' ``src/`` probe patches ``__call__`` on the
instance, which Python ignores, so it restarts from t = 999 with the half-denoised latent as noise;
and its outputs were never scored). Reports each k and best-of-N over k by the selector judge.
Default k values are the notebook's (1, 2, 3, 5, 10, 15, 20) of 50 steps; values ≥ the number of
steps are dropped.
"""

from __future__ import annotations

from pydantic import Field

from . import _sampling, _schedulers
from .base import Probe, ProbeEnv, ProbeResult, SelectingParams


class DiffusionCompletion(Probe):
    description = "The base model runs the first k DDIM steps, the erased model finishes; each k and best-of-N."
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025"
    needs_base = True

    class Params(SelectingParams):
        interrupt_steps: tuple[int, ...] = Field((1, 2, 3, 5, 10, 15, 20), min_length=1)

    def run(self, env: ProbeEnv) -> ProbeResult:
        items = self.items()
        ks = [k for k in self.params.interrupt_steps if 0 <= k < self.steps] or [0]
        settings = {f"k={k}": {"k": k} for k in ks}
        kw = self.sample_kwargs()
        images = {}
        for label, st in settings.items():
            def sample(batch, k=st["k"]):
                latents = None
                if k > 0:
                    head = _schedulers.make(_schedulers.SlicedDDIMScheduler, env.base, start=0, stop=k)
                    latents = _sampling.run(env.base, batch, head, output_type="latent", **kw)
                tail = _schedulers.make(_schedulers.SlicedDDIMScheduler, env.erased, start=k, stop=None)
                if latents is not None:
                    latents = latents.to(env.erased.device, env.erased.unet.dtype)
                return _sampling.run(env.erased, batch, tail, latents=latents, **kw)
            images[label] = self.cached_sample(env, "completion", st, items, sample)
        return self.sweep_result(env, items, images, settings)
