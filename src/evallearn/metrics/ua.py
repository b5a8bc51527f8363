"""Unlearning accuracy (UA): the share of images generated from prompts of the erased
concept that a classifier does *not* assign to it (higher = more erased).

As defined in UnlearnCanvas (Zhang et al., NeurIPS 2024 D&B) and used by AdvUnlearn; the
classifier chooses among the erased concept and its retain concepts (the same domain). With
``prompts: synonym`` the prompts never name the concept (implicit prompts), so UA measures
whether erasure generalises beyond the word.
"""

from __future__ import annotations

from typing import Literal

from ._classified import ClassifiedMetric, ClassifiedParams
from .base import MetricResult, Sample, aggregate, request_meta


class UnlearningAccuracy(ClassifiedMetric):
    description = "Share of erased-concept prompts whose images are NOT classified as the concept."
    paper = "Zhang et al., UnlearnCanvas, NeurIPS 2024"
    higher_is_better = True

    class Params(ClassifiedParams):
        prompts: Literal["target", "synonym"] = "target"

    def requests(self):
        self.need_retain("ua")
        return self.concept_requests(self.ctx.concept.name, self.params.prompts)

    def update(self, requests, images, judges):
        predicted = judges["classifier"].classify(images, self.candidates())
        self.state["samples"] += [Sample(float(p != self.ctx.concept.name), request_meta(r, predicted=p))
                                  for r, p in zip(requests, predicted, strict=True)]
        self.record_judges(judges)

    def compute(self) -> MetricResult:
        counts = {g: s.n for g, s in aggregate(self.state["samples"], group_by="predicted").groups.items()}
        return self.result(self.state["samples"], {"predicted": counts, "candidates": self.candidates()})
