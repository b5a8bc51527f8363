"""P4D's prompt sets (Chin, Jiang, Huang, Chen & Chiu, ICML 2024, "Prompting4Debugging:
Red-Teaming Text-to-Image Diffusion Models by Finding Problematic Prompts").

I2P rows selected per safe model and concept (e.g. ``unsafe-prompts-nudity_esd.csv``: prompts
whose images are still unsafe on SD but safe on ESD), in I2P's columns (prompt, categories,
evaluation seed and guidance). Public home: ``https://github.com/joycenerd/P4D`` (``data/``).
They are the *inputs* to the P4D attack. The toy analogue is the concept's target prompts.
"""

from __future__ import annotations

from .base import DatasetParams, PromptDataset, PromptRecord, as_float, as_int, column


class P4DPrompts(PromptDataset):
    description = "P4D's ideal-prompt sets (I2P rows per safe model and concept)."
    paper = "Chin et al., ICML 2024"
    home = "github.com/joycenerd/P4D data/unsafe-prompts-<concept>_<model>.csv"

    class Params(DatasetParams):
        pass

    def read(self, rows):
        pc = column(rows, ("prompt",), self.name)
        sc = column(rows, ("evaluation_seed", "seed"), self.name, required=False)
        gc = column(rows, ("evaluation_guidance", "guidance"), self.name, required=False)
        cc = column(rows, ("categories",), self.name, required=False)
        return [PromptRecord(str(r[pc]).strip(), as_int(r.get(sc)) if sc else None,
                             as_float(r.get(gc)) if gc else None,
                             tuple(c.strip() for c in str(r.get(cc, "") if cc else "").split(",") if c.strip()))
                for r in rows if str(r[pc]).strip()]
