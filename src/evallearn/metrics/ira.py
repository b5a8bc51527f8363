"""In-domain retain accuracy (IRA): classification accuracy on images of the *other*
concepts of the erased concept's domain (higher = less collateral damage).

As defined in UnlearnCanvas (Zhang et al., NeurIPS 2024 D&B). Per-concept accuracies are in
``details.per_concept``, so a drop confined to one neighbour is visible.
"""

from __future__ import annotations

from ._classified import ClassifiedMetric
from .base import MetricResult, Sample, aggregate, request_meta


class InDomainRetainAccuracy(ClassifiedMetric):
    description = "Classifier accuracy on prompts of the retained concepts of the same domain."
    paper = "Zhang et al., UnlearnCanvas, NeurIPS 2024"
    higher_is_better = True

    def requests(self):
        return [r for c in self.need_retain("ira") for r in self.concept_requests(c)]

    def update(self, requests, images, judges):
        retain = self.need_retain("ira")
        owner = {r: c for c in retain for r in self.concept_requests(c)}
        predicted = judges["classifier"].classify(images, self.candidates())
        self.state["samples"] += [Sample(float(p == owner[r]), request_meta(r, concept=owner[r], predicted=p))
                                  for r, p in zip(requests, predicted, strict=True)]
        self.record_judges(judges)

    def compute(self) -> MetricResult:
        per = aggregate(self.state["samples"], group_by="concept").group_values()
        return self.result(self.state["samples"], {"per_concept": per})
