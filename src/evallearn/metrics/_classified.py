"""Shared machinery of the classification-based metrics (UA, IRA): prompt sets per concept,
seeds, a classifier judge, and one per-image record (:class:`~.base.Sample`) as state."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..components import Params
from ..errors import UserError
from ._prompts import concept_prompts, default_judge, retain_concepts
from .base import JudgeRef, Metric


class ClassifiedParams(Params):
    #: classifier judge: ``auto`` = the one the model's world names (CLIP zero-shot on real models)
    judge: str = "auto"
    judge_params: dict = {}
    images_per_prompt: int = Field(1, ge=1)
    #: cap on prompts per concept (spread evenly over the prompt set); 0 = all
    max_prompts: int = Field(24, ge=0)


class ClassifiedMetric(Metric):
    Params = ClassifiedParams
    scores_each_image = True
    #: role -> judge capabilities, any one of which the role needs (checked by ``validate``)
    judge_needs = {"classifier": ("classify",)}

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        #: one :class:`~.base.Sample` per image, in the order scored
        self.add_state("samples", list, reduce="cat")

    def judge_refs(self):
        name = self.params.judge
        if name == "auto":
            name = default_judge(self.ctx, "classifier")
        return {"classifier": JudgeRef(name, dict(self.params.judge_params))}

    def candidates(self) -> list[str]:
        return [self.ctx.concept.name, *retain_concepts(self.ctx)]

    def concept_requests(self, concept: str, which: str = "target"):
        prompts = concept_prompts(self.ctx, concept, which)
        n = self.params.max_prompts
        if n and len(prompts) > n:
            prompts = [prompts[i] for i in np.linspace(0, len(prompts) - 1, n).round().astype(int)]
        return [self.ctx.request(p, self.ctx.seed + j) for p in prompts for j in range(self.params.images_per_prompt)]

    def need_retain(self, key: str) -> list[str]:
        retain = retain_concepts(self.ctx)
        if not retain:
            raise UserError(f"metric '{self.name}': needs concept.retain (other concepts of the same kind)")
        return retain
