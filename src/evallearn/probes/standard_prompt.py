"""Standard prompt probe — the baseline of Lu et al. (2025, "When Are Concepts Erased From
Diffusion Models?", arXiv:2505.17013; ``StandardPromptProbe`` in kevinlu4588/WhenAreConceptsErased):
the concept's own prompts, one image per (prompt, seed), with the run's sampler (the paper: the
pipeline's defaults, 50 steps, CFG 7.5). Every other probe is read against it. It also samples
the base model on the same (prompt, seed) pairs, the reference rate the erasure started from.
"""

from __future__ import annotations

from .base import Probe, ProbeEnv, ProbeParams, ProbeResult


class StandardPrompt(Probe):
    description = "The concept's own prompts on the erased model (the baseline every probe is read against)."
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025"
    needs_base = True

    class Params(ProbeParams):
        #: also sample the base model on the same prompts and seeds (its rate is the reference)
        with_base: bool = True

    def run(self, env: ProbeEnv) -> ProbeResult:
        items = self.items()
        keys = self.request_keys(items)  # the metrics' requests: these images are theirs too
        rec, samples = self.scored(env, self.standard_images(env, items, "erased"), items, keys, setting="standard")
        details = {"prompts": [list(it) for it in items]}
        if self.params.with_base:
            details["base"] = self.before(env, *self.scored(env, self.standard_images(env, items, "base"), items,
                                                            keys, setting="standard"))
        return self.result(env, rec, details, samples)
