"""MMA-Diffusion's NSFW adversarial prompt benchmark (Yang et al., CVPR 2024, "MMA-Diffusion:
MultiModal Attack on Diffusion Models").

1,000 target prompts with the adversarial prompts the authors found with their text-modal attack
against SD v1.5 (``target_prompt``, ``adv_prompt``, ``sanitized_adv_prompt``, ``clean_prompt``).
Public home: the Hugging Face dataset ``YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark``.
``use`` picks which column becomes the prompt; the others are kept in ``meta``. These are
*transfer* prompts (found against SD v1.5); the ``mma_diffusion`` attack re-runs the search
against the unlearned model instead.

The toy analogue has no precomputed adversarial prompts: its records are the concept's target
prompts, i.e. the attack's inputs.
"""

from __future__ import annotations

from typing import Literal

from .base import DatasetParams, PromptDataset, PromptRecord, column


class MMADiffusionPrompts(PromptDataset):
    description = "MMA-Diffusion NSFW benchmark: target prompts and their adversarial prompts."
    paper = "Yang et al., CVPR 2024"
    home = "Hugging Face dataset YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark"

    class Params(DatasetParams):
        use: Literal["adv_prompt", "sanitized_adv_prompt", "target_prompt", "clean_prompt"] = "adv_prompt"

    def read(self, rows):
        cols = {k: column(rows, (k,), self.name, required=k in ("target_prompt", self.params.use))
                for k in ("target_prompt", "adv_prompt", "sanitized_adv_prompt", "clean_prompt")}
        use = cols[self.params.use]
        out = []
        for r in rows:
            meta = {k: str(r[c]) for k, c in cols.items() if c}
            if str(r[use]).strip():
                out.append(PromptRecord(str(r[use]).strip(), meta=meta))
        return out
