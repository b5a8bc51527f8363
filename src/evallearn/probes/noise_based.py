"""Noise-based probe (inference-time noising) of Lu et al. (2025, "When Are Concepts Erased From
Diffusion Models?", arXiv:2505.17013; ``NoiseBasedProbe`` and ``eta_ddim_scheduler.py`` in
kevinlu4588/WhenAreConceptsErased).

DDIM with η > 1 and a variance scale (:class:`~._schedulers.EtaDDIMScheduler`) makes each step
noisier than DDPM, letting a trajectory wander off the path the erased model's guidance steers
it along; if the concept's knowledge is still in the model, some noisier trajectories land on
it. Built as the authors meant it and not as their code runs:

* ``variance_scale`` reaches the scheduler (an attribute of the scheduler subclass; the
  authors' stock pipeline silently drops the keyword, so their sweep only varies η);
* the initial latents are fixed per (prompt, seed) across the whole η × scale sweep, and the
  step noise is seeded from the same seed, so the settings differ only in η and the scale. The
  authors' current code reuses one generator for all 24 candidates and their paper-era script
  passes none, so there every candidate starts from fresh noise and best-of-N also picks among
  independent samples; ``fresh_latents: true`` does that (each candidate gets its own seeded
  initial and step noise) for numbers comparable with the paper's;
* every setting is reported on its own, and best-of-N is chosen by the selector judge (CLIP
  score against the prompt), never by the scoring judge.

Defaults are the authors' ``configs/default.yaml``: η ∈ {1.0, 1.17, 1.34, 1.51, 1.68, 1.85} ×
scale ∈ {1.00, 1.02, 1.03, 1.04} (24 candidates per prompt), with the run's steps and CFG
(paper: 50 and 7.5).
"""

from __future__ import annotations

from pydantic import Field

from . import _sampling
from .base import Probe, ProbeEnv, ProbeResult, SelectingParams


class NoiseBased(Probe):
    description = "DDIM with eta > 1 and a variance scale, swept from fixed initial latents; best-of-N by a selector."
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025"

    class Params(SelectingParams):
        etas: tuple[float, ...] = Field((1.0, 1.17, 1.34, 1.51, 1.68, 1.85), min_length=1)
        variance_scales: tuple[float, ...] = Field((1.00, 1.02, 1.03, 1.04), min_length=1)
        #: True = each candidate starts from its own initial noise (the authors' code); False = the
        #: same initial latents for every setting of a (prompt, seed)
        fresh_latents: bool = False

    def settings(self) -> dict[str, dict]:
        return {f"eta={e:g},scale={s:g}": {"eta": e, "variance_scale": s}
                for e in self.params.etas for s in self.params.variance_scales}

    @staticmethod
    def candidate_seed(seed: int, index: int) -> int:
        """The seed of candidate ``index`` of an item under ``fresh_latents`` (index 0 keeps the item's)."""
        return (int(seed) + 1_000_003 * index) % (2**63)

    def run(self, env: ProbeEnv) -> ProbeResult:
        from . import _schedulers  # (diffusers: imported when the probe runs)

        items = self.items()
        settings = self.settings()
        fresh = self.params.fresh_latents
        images, keys = {}, {}
        for index, (label, st) in enumerate(settings.items()):
            def sample(batch, st=st, index=index):
                sched = _schedulers.make(_schedulers.EtaDDIMScheduler, env.erased,
                                         variance_scale=st["variance_scale"])
                if fresh:
                    batch = [(p, self.candidate_seed(s, index)) for p, s in batch]
                return _sampling.run(env.erased, batch, sched, eta=st["eta"], **self.sample_kwargs())
            setting = {**st, "candidate": index} if fresh else st
            images[label] = self.cached_sample(env, "erased", setting, items, sample)
            keys[label] = self.sample_keys("erased", setting, items)
        return self.sweep_result(env, items, images, settings,
                                 {"initial_latents": "fresh per candidate" if fresh else "fixed per (prompt, seed)"},
                                 keys)
