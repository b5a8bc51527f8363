"""The metric interface, in the style of torchmetrics.

A metric declares the generation requests it needs (:meth:`Metric.requests`) and the judges it
uses (:meth:`Metric.judge_refs`). The runner generates (deduplicated across metrics), then calls
:meth:`Metric.update` with the requests, their decoded images and the loaded judges, and finally
:meth:`Metric.compute`. State is a dict of per-sample lists, so two shards merge by
concatenation (:meth:`Metric.merge`) and the result does not depend on how images were split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..components import Component, Params
from ..context import RunContext
from ..generation import GenRequest
from ..judges.base import Judge
from ..stats import bootstrap_ci


@dataclass
class MetricResult:
    """A metric's value with its 95 % bootstrap interval over ``n`` scored images.

    ``value`` (and the interval) is None when no image could be scored: every image the metric
    asked for had non-finite latents or pixels. ``nonfinite`` counts the images left out so.
    """

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict)
    judges: dict[str, Any] = field(default_factory=dict)
    nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def no_value(cls, higher_is_better: bool, nonfinite: int) -> MetricResult:
        return cls(value=None, ci_low=None, ci_high=None, n=0, higher_is_better=higher_is_better,
                   details={"no_value": "every image of this metric had non-finite latents or pixels"},
                   nonfinite=nonfinite)


@dataclass(frozen=True)
class JudgeRef:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.name, tuple(sorted((k, repr(v)) for k, v in self.params.items())))


class Metric(Component):
    higher_is_better: ClassVar[bool] = True
    #: True when :meth:`update` scores each image on its own, so it may be given any subset of
    #: :meth:`requests` (the runner leaves out images with NaN/inf). False (the safe default, for
    #: a metric that reads its images by position): one non-finite image leaves it with no value.
    scores_each_image: ClassVar[bool] = False

    def __init__(self, params: Params, ctx: RunContext) -> None:
        self.params = params
        self.ctx = ctx
        self.reset()

    def reset(self) -> None:
        self.state: dict[str, list] = {}

    def judge_refs(self) -> dict[str, JudgeRef]:
        return {}

    def requests(self) -> list[GenRequest]:
        raise NotImplementedError

    def update(self, requests: list[GenRequest], images: np.ndarray, judges: dict[str, Judge]) -> None:
        raise NotImplementedError

    def bind_pipeline(self, pipe, stage: str) -> bool:
        """Called with the base pipeline (``stage='before'``) and the unlearned one (``'after'``)
        before their images are generated. A metric whose prompts depend on the model (an
        adversarial attack) computes them here and returns True: the runner then asks
        :meth:`requests` again. Default: nothing to do."""
        return False

    def compute(self) -> MetricResult:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------
    def _append(self, key: str, values) -> None:
        self.state.setdefault(key, []).extend(np.asarray(values).tolist())

    def merge(self, other: Metric) -> None:
        for key, values in other.state.items():
            self.state.setdefault(key, []).extend(values)

    def mean_result(self, key: str, details: dict[str, Any] | None = None,
                    judges: dict[str, Judge] | None = None) -> MetricResult:
        values = np.asarray(self.state.get(key, []), dtype=float)
        lo, hi = bootstrap_ci(values)
        return MetricResult(
            value=float(values.mean()) if values.size else float("nan"),
            ci_low=lo,
            ci_high=hi,
            n=int(values.size),
            higher_is_better=self.higher_is_better,
            details=details or {},
            judges={role: j.spec() for role, j in (judges or {}).items()},
        )
