"""CLIP score (Hessel et al., EMNLP 2021, "CLIPScore: A Reference-free Evaluation Metric for
Image Captioning"): ``100 * max(cos(image, prompt), 0)`` averaged over images, with the
weight w = 100 as in common text-to-image use (torchmetrics' convention).

Our own code rather than torchmetrics' ``CLIPScore``, which only accepts a fixed list of hub
ids and breaks on transformers 5. With ``clip_model: auto`` the toy world's CLIP is used for
the toy model and CLIP ViT-L/14 otherwise.
"""

from __future__ import annotations

from typing import Literal

from ..components import Params
from ..models.clip import DEFAULT_CLIP, auto_clip_ref
from .base import JudgeRef, Metric, MetricResult, Sample, aggregate, request_meta


class ClipScore(Metric):
    description = "Mean 100*max(cos,0) between generated images and their prompts under CLIP."
    paper = "Hessel et al., EMNLP 2021"
    higher_is_better = True
    scores_each_image = True

    class Params(Params):
        clip_model: str = "auto"
        prompts: tuple[str, ...] | None = None
        prompt_set: Literal["retain", "target", "all"] = "retain"
        templates: tuple[str, ...] = ("a photo of a {}",)
        images_per_prompt: int = 4

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        #: one :class:`~.base.Sample` per image: 100 * max(cos, 0), with its prompt group
        self.add_state("samples", list, reduce="cat")

    def clip_ref(self) -> str:
        if self.params.clip_model != "auto":
            return self.params.clip_model
        return auto_clip_ref(self.ctx.model)

    @classmethod
    def models_used(cls, params=None):
        p = params or cls.Params()
        return ["toy CLIP (toy model) / " + DEFAULT_CLIP] if p.clip_model == "auto" else [p.clip_model]

    def judge_refs(self):
        return {"clip": JudgeRef("clip", {"clip_model": self.clip_ref()})}

    def prompt_groups(self) -> dict[str, list[str]]:
        if self.params.prompts:
            return {"custom": list(self.params.prompts)}
        c = self.ctx.concept
        groups = {
            "target": [t.format(w) for w in (c.name, *c.synonyms) for t in self.params.templates],
            "retain": [t.format(w) for w in c.retain for t in self.params.templates],
        }
        if self.params.prompt_set == "all":
            return groups
        return {self.params.prompt_set: groups[self.params.prompt_set]}

    def requests(self):
        seed = self.ctx.seed
        return [
            self.ctx.request(p, seed + j)
            for prompts in self.prompt_groups().values()
            for p in prompts
            for j in range(self.params.images_per_prompt)
        ]

    def update(self, requests, images, judges):
        cos = judges["clip"].score(images, [r.prompt for r in requests])
        groups = self.prompt_groups()
        group_of = {p: g for g, ps in groups.items() for p in ps}
        self.state["samples"] += [Sample(100.0 * max(float(c), 0.0),
                                         request_meta(r, group=group_of.get(r.prompt, "other")))
                                  for r, c in zip(requests, cos, strict=True)]
        self.record_judges(judges)

    def compute(self) -> MetricResult:
        per_group = aggregate(self.state["samples"], group_by="group").group_values()
        return self.result(self.state["samples"], {"per_group": per_group})
