"""Diffusion-completion probe of Lu et al. (2025, "When Are Concepts Erased From Diffusion
Models?", arXiv:2505.17013; ``probe_notebooks/diffusion-completion.ipynb`` in
kevinlu4588/WhenAreConceptsErased).

The base model starts the concept prompt's DDIM trajectory and hands its partially denoised
latent to the erased model, which finishes the *same* schedule. Where the concept survives even
after a few base steps, the erased model only avoids starting it. ``k`` is the notebook's
interrupt index: the base model runs steps 0..k (k + 1 steps, its latent taken at the end of
step k) and the erased model runs steps k + 1 onwards. Both halves are DDIM (η = 0) from the same
seeded initial latents, sliced out of one schedule by :class:`~._schedulers.SlicedDDIMScheduler`
(the authors' ``src/`` probe patches ``__call__`` on the instance, which Python ignores, so it
restarts from t = 999 with the half-denoised latent as noise; and its outputs were never
scored). Default k values are the notebook's (1, 2, 3, 5, 10, 15, 20) of 50 steps; values that
leave the erased model no step are dropped. Reports each k and best-of-N over k by the selector
judge, and (``with_base``) the control: the base model finishing the same trajectories itself,
i.e. its own full DDIM run from the same latents — the rate the hand-over starts from.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..errors import UserError
from . import _sampling
from .base import Probe, ProbeEnv, ProbeResult, SelectingParams


class DiffusionCompletion(Probe):
    description = ("The base model runs DDIM steps 0..k, the erased model finishes; each k, best-of-N, "
                   "and the base model's own completion.")
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025"
    needs_base = True

    class Params(SelectingParams):
        #: the notebook's interrupt indices: the base model runs k + 1 steps, the erased model the rest
        interrupt_steps: tuple[int, ...] = Field((1, 2, 3, 5, 10, 15, 20), min_length=1)
        #: also run the base model's own completion (its full DDIM run of the same trajectories)
        with_base: bool = True

    def interrupts(self) -> list[int]:
        ks = [k for k in self.params.interrupt_steps if 0 <= k < self.steps - 1]
        if not ks:
            raise UserError(f"probe '{self.name}': interrupt_steps {list(self.params.interrupt_steps)} leave the "
                            f"erased model no step of {self.steps} (each k needs 0 <= k < steps - 1)")
        return ks

    def complete(self, env: ProbeEnv, batch, k: int):
        """Base model runs steps 0..k, the erased model steps k + 1.. of the same DDIM schedule."""
        from . import _schedulers  # (diffusers: imported when the probe runs)

        kw = self.sample_kwargs()
        head = _schedulers.make(_schedulers.SlicedDDIMScheduler, env.base, start=0, stop=k + 1)
        latents = _sampling.run(env.base, batch, head, output_type="latent", **kw)
        tail = _schedulers.make(_schedulers.SlicedDDIMScheduler, env.erased, start=k + 1, stop=None)
        latents = latents.to(env.erased.device, env.erased.unet.dtype)
        return _sampling.run(env.erased, batch, tail, latents=latents, **kw)

    def base_control(self, env: ProbeEnv, items) -> np.ndarray:
        """The base model's full DDIM run of the same (prompt, seed) trajectories, stored with the
        base model's images (shared by every run on the base model)."""
        from diffusers import DDIMScheduler

        from . import _schedulers

        def sample(batch):
            return _sampling.run(env.base, batch, _schedulers.make(DDIMScheduler, env.base), **self.sample_kwargs())

        return self.cached_sample(env, "completion_base", {}, items, sample, env.base_images)

    def run(self, env: ProbeEnv) -> ProbeResult:
        items = self.items()
        settings = {f"k={k}": {"k": k, "base_steps": k + 1} for k in self.interrupts()}
        images, keys = {}, {}
        for label, st in settings.items():
            def sample(batch, k=st["k"]):
                return self.complete(env, batch, k)
            images[label] = self.cached_sample(env, "completion", st, items, sample)
            keys[label] = self.sample_keys("completion", st, items)
        extra = {}
        if self.params.with_base:
            extra["base"] = self.before(env, *self.scored(env, self.base_control(env, items), items,
                                                          self.sample_keys("completion_base", {}, items),
                                                          setting="base model's own run"))
        return self.sweep_result(env, items, images, settings, extra, keys)
