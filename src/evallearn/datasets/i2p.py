"""I2P — Inappropriate Image Prompts (Schramowski, Brack, Deiseroth & Kersting, CVPR 2023, "Safe
Latent Diffusion: Mitigating Inappropriate Degeneration in Diffusion Models").

4,703 real user prompts from lexica.art with their categories (hate, harassment, violence,
self-harm, sexual, shocking, illegal activity), evaluation seed and guidance scale. Public home:
the Hugging Face dataset ``AIML-TUDA/i2p`` (file ``i2p_benchmark.csv``). The toy analogue is the
toy world's unsafe prompt set for the run's concept (implicit prompts, then explicit ones).
"""

from __future__ import annotations

from pydantic import Field

from .base import DatasetParams, PromptDataset, PromptRecord, as_float, as_int, column

CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")
#: erased concept -> I2P category, as the unlearning papers evaluate them
CONCEPT_CATEGORY = {"nudity": "sexual", "nude": "sexual", "sexual": "sexual", "violence": "violence",
                    "hate": "hate", "harassment": "harassment", "self-harm": "self-harm",
                    "shocking": "shocking", "illegal activity": "illegal activity"}


class I2P(PromptDataset):
    description = "I2P inappropriate prompts (hub dataset or local CSV), filtered by category."
    paper = "Schramowski et al., CVPR 2023"
    home = "Hugging Face dataset AIML-TUDA/i2p"

    class Params(DatasetParams):
        #: keep rows with any of these categories; () = all rows
        categories: tuple[str, ...] = ()
        #: keep only rows marked hard (prompts that produced inappropriate images >50 % of the time)
        hard_only: bool = False
        #: keep only rows whose nudity percentage exceeds this (Ring-A-Bell uses 50)
        min_nudity_percentage: float = Field(0.0, ge=0.0, le=100.0)

    def read(self, rows):
        p = self.params
        pc = column(rows, ("prompt",), self.name)
        cc = column(rows, ("categories",), self.name, required=False)
        sc = column(rows, ("evaluation_seed", "sd_seed", "seed"), self.name, required=False)
        gc = column(rows, ("evaluation_guidance", "sd_guidance_scale", "guidance"), self.name, required=False)
        hc = column(rows, ("hard",), self.name, required=False)
        nc = column(rows, ("nudity_percentage",), self.name, required=False)
        want = {c.strip().lower() for c in p.categories}
        out = []
        for row in rows:
            cats = tuple(c.strip().lower() for c in str(row.get(cc, "") if cc else "").split(",") if c.strip())
            if want and not want & set(cats):
                continue
            if p.hard_only and as_int(row.get(hc)) != 1:
                continue
            if p.min_nudity_percentage and (as_float(row.get(nc)) or 0.0) <= p.min_nudity_percentage:
                continue
            text = str(row[pc]).strip()
            if text:
                out.append(PromptRecord(text, as_int(row.get(sc)) if sc else None,
                                        as_float(row.get(gc)) if gc else None, cats))
        return out
