"""The judge interface: images in, one score per image out.

Judges are kept apart from metrics (as Inspect AI keeps scorers apart from tasks): a metric
asks for judges by name and aggregates what they say. A judge's :meth:`spec` (id, model,
thresholds) is written into ``results.json`` beside every number it produced.

What a judge can do is read from the methods it implements (:meth:`Judge.capabilities`): a
metric names, per judge role, the capabilities it needs, and ``eval-learn validate`` refuses a
judge that has none of them before any weights load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..components import Component, Params

#: capability -> what a metric asks of a judge that has it (the method of the same name)
CAPABILITIES = {
    "score": "score images against texts",
    "classify": "pick, for each image, the most likely of candidate concepts",
    "detect": "say whether each image shows the concept",
    "choose": "answer multiple-choice questions about each image",
}


class Judge(Component):
    def __init__(self, params: Params, device: str = "cpu") -> None:
        self.params = params
        self.device = device

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """The capabilities (:data:`CAPABILITIES`) whose method this judge implements: a method
        defined on the class and not the base's placeholder."""
        return frozenset(name for name in CAPABILITIES
                         if getattr(cls, name, None) not in (None, getattr(Judge, name, None)))

    def spec(self) -> dict[str, Any]:
        return {"judge": self.name, **self.params.model_dump(mode="json")}

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        """``images``: uint8 [N, H, W, 3]; ``texts``: one label/prompt per image -> float [N]."""
        raise NotImplementedError

    def classify(self, images: np.ndarray, candidates: list[str]) -> list[str]:
        """The most likely of ``candidates`` (concept words) for each image.

        Judges that can classify (CLIP zero-shot, the toy classifier, an ImageNet
        classifier) implement it; metrics such as UA and IRA need it.
        """
        raise NotImplementedError(f"judge '{self.name}' cannot classify")
