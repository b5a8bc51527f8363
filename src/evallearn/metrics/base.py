"""The metric interface, in the style of torchmetrics (declared state) and inspect_ai (per-sample
scores with metadata, grouping as an aggregation).

A metric declares the generation requests it needs (:meth:`Metric.requests`) and the judges it
uses (:meth:`Metric.judge_refs`). The runner generates (deduplicated across metrics), then calls
:meth:`Metric.update` with *that metric's own* requests, their decoded images and the loaded
judges, and finally :meth:`Metric.compute`.

State is declared with :meth:`Metric.add_state` (name, default, how two shards combine, whether
:meth:`Metric.reset` clears it). Scores are kept as :class:`Sample` records, one per scored image
(or question), whose ``meta`` carries the request (prompt, seed, key) and whatever the metric
groups by (concept, arm, group, ...); :func:`aggregate` turns records into a value, a 95 %
bootstrap interval, ``n`` and per-group means.

:meth:`Metric.merge` combines two shards only where that is exact: every declared state must be
a concatenation of records (``reduce="cat"``) or an input both shards share (``reduce="same"``,
e.g. FID's reference features, judge specs). A state declared with ``reduce=None`` makes the
metric refuse to merge (:class:`MergeError`) instead of returning a number that depends on the
split. Merging two contiguous shards of a request list gives the value the whole list gives
(intervals too: the bootstrap resamples records in their order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ..components import Component, Params
from ..context import RunContext
from ..generation import GenRequest
from ..judges.base import Judge
from ..stats import bootstrap_ci

Reduce = Literal["cat", "same"] | None


class MergeError(ValueError):
    """Two metric shards cannot be combined exactly."""


@dataclass
class MetricResult:
    """A metric's value with its 95 % bootstrap interval over ``n`` scored images.

    ``value`` (and the interval) is None when no image could be scored: every image the metric
    asked for had non-finite latents or pixels. ``nonfinite`` counts the images left out so.
    ``samples``: the per-sample records (:meth:`Sample.to_dict`) behind the value, or None where
    the metric keeps none (FID: features, not scores).
    """

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict)
    judges: dict[str, Any] = field(default_factory=dict)
    nonfinite: int = 0
    samples: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def no_value(cls, higher_is_better: bool, nonfinite: int) -> MetricResult:
        return cls(value=None, ci_low=None, ci_high=None, n=0, higher_is_better=higher_is_better,
                   details={"no_value": "every image of this metric had non-finite latents or pixels"},
                   nonfinite=nonfinite)


@dataclass(frozen=True)
class Sample:
    """One score (an image's, or a question's) with what it is about: ``meta`` holds the request
    (``prompt``, ``seed``, ``key``) and the metric's grouping fields (``concept``, ``arm``, ...)."""

    value: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, **self.meta}


def request_meta(request: GenRequest, **meta: Any) -> dict[str, Any]:
    """A sample's metadata: its request's prompt, seed and content key, then ``meta``."""
    return {"prompt": request.prompt, "seed": request.seed, "key": request.key, **meta}


@dataclass(frozen=True)
class Group:
    value: float
    n: int


@dataclass(frozen=True)
class Aggregate:
    """:func:`aggregate`'s answer. ``groups``: group -> mean and count, in first-seen order."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    groups: dict[Any, Group] = field(default_factory=dict)

    def group_values(self) -> dict[Any, float]:
        return {g: s.value for g, s in self.groups.items()}


def aggregate(samples: Iterable[Sample], group_by: str | None = None) -> Aggregate:
    """Mean of the samples' values with a 95 % percentile bootstrap interval (fixed seed,
    :func:`evallearn.stats.bootstrap_ci`), their count, and with ``group_by`` the mean and count
    of each value of ``meta[group_by]`` (inspect_ai's ``grouped``)."""
    samples = list(samples)
    values = np.asarray([s.value for s in samples], dtype=float)
    lo, hi = bootstrap_ci(values)
    groups: dict[Any, Group] = {}
    if group_by is not None:
        by: dict[Any, list[float]] = {}
        for s in samples:
            by.setdefault(s.meta.get(group_by), []).append(s.value)
        groups = {g: Group(float(np.mean(v)), len(v)) for g, v in by.items()}
    return Aggregate(float(values.mean()) if values.size else float("nan"), lo, hi, int(values.size), groups)


@dataclass(frozen=True)
class JudgeRef:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.name, tuple(sorted((k, repr(v)) for k, v in self.params.items())))


@dataclass(frozen=True)
class StateSpec:
    default: Callable[[], Any]
    reduce: Reduce
    reset: bool


def _empty(value) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    return a == b


class Metric(Component):
    higher_is_better: ClassVar[bool] = True
    #: True when :meth:`update` scores each image on its own, so it may be given any subset of
    #: :meth:`requests` (the runner leaves out images with NaN/inf). False (the safe default, for
    #: a metric that needs all its images together): one non-finite image leaves it with no value.
    scores_each_image: ClassVar[bool] = False

    def __init__(self, params: Params, ctx: RunContext) -> None:
        self.params = params
        self.ctx = ctx
        self._specs: dict[str, StateSpec] = {}
        self.state: dict[str, Any] = {}
        #: role -> spec of the judges that scored the records (shared by shards, so "same")
        self.add_state("judges", dict, reduce="same")

    # -- declared state -------------------------------------------------------------------
    def add_state(self, name: str, default: Callable[[], Any] = list, reduce: Reduce = "cat",
                  reset: bool = True) -> None:
        """Declare state ``name``, initialised with ``default()``. ``reduce``: how two shards
        combine in :meth:`merge`: ``cat`` concatenates (per-sample records), ``same`` requires
        equal values (an input every shard shares) and keeps one, None refuses to merge.
        ``reset=False``: :meth:`reset` keeps it (an input filled once, as FID's reference)."""
        if name in self._specs:
            raise ValueError(f"metric '{self.name}': state '{name}' declared twice")
        self._specs[name] = StateSpec(default, reduce, reset)
        self.state[name] = default()

    def reset(self) -> None:
        """Every declared state back to its default, except those declared ``reset=False``;
        undeclared keys (written by :meth:`_append`) are dropped."""
        specs = getattr(self, "_specs", {})
        old = getattr(self, "state", {})
        self.state = {name: (old[name] if not spec.reset and name in old else spec.default())
                      for name, spec in specs.items()}

    def merge(self, other: Metric) -> None:
        """Add ``other``'s shard to this one, exactly or not at all (:class:`MergeError`)."""
        if type(other) is not type(self) or other.params != self.params:
            raise MergeError(f"metric '{self.name}': can merge only a shard of the same metric with the same params")
        undeclared = sorted((set(self.state) | set(other.state)) - set(self._specs))
        if undeclared:
            raise MergeError(f"metric '{self.name}': state {', '.join(undeclared)} is not declared with add_state, "
                             "so how shards combine is unknown")
        for name, spec in self._specs.items():
            if spec.reduce is None:
                raise MergeError(f"metric '{self.name}': state '{name}' is not a concatenation of per-sample "
                                 "records, so a merge would depend on how the images were split")
            if spec.reduce == "same":
                a, b = self.state[name], other.state[name]
                if not (_empty(a) or _empty(b) or _equal(a, b)):
                    raise MergeError(f"metric '{self.name}': the shards differ in '{name}', which every shard "
                                     "must share")
        for name, spec in self._specs.items():
            if spec.reduce == "cat":
                self.state[name] = list(self.state[name]) + list(other.state[name])
            elif _empty(self.state[name]):
                self.state[name] = other.state[name]

    # -- the contract ---------------------------------------------------------------------
    def judge_refs(self) -> dict[str, JudgeRef]:
        return {}

    def requests(self) -> list[GenRequest]:
        raise NotImplementedError

    def update(self, requests: list[GenRequest], images: np.ndarray, judges: dict[str, Judge]) -> None:
        """Score ``images`` (those of ``requests``, in order) with ``judges`` (role -> judge)."""
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
        """Extend the plain-value list ``key`` (an undeclared state: :meth:`merge` refuses it)."""
        self.state.setdefault(key, []).extend(np.asarray(values).tolist())

    def record_judges(self, judges: dict[str, Judge]) -> None:
        """Keep the spec of each judge that scored this update (written beside the value)."""
        specs = {role: j.spec() for role, j in judges.items()}
        if self.state.get("judges") and self.state["judges"] != specs:
            raise MergeError(f"metric '{self.name}': updates scored by different judges")
        self.state["judges"] = specs

    def result(self, samples: list[Sample], details: dict[str, Any] | None = None,
               keep_samples: bool = True) -> MetricResult:
        """The mean of ``samples`` (:func:`aggregate`) as this metric's result."""
        agg = aggregate(samples)
        return MetricResult(value=agg.value, ci_low=agg.ci_low, ci_high=agg.ci_high, n=agg.n,
                            higher_is_better=self.higher_is_better, details=details or {},
                            judges=dict(self.state.get("judges") or {}),
                            samples=[s.to_dict() for s in samples] if keep_samples else None)

    def mean_result(self, key: str, details: dict[str, Any] | None = None,
                    judges: dict[str, Any] | None = None) -> MetricResult:
        """The mean of the plain values in state ``key`` (judges: role -> judge or its spec)."""
        values = np.asarray(self.state.get(key, []), dtype=float)
        lo, hi = bootstrap_ci(values)
        return MetricResult(
            value=float(values.mean()) if values.size else float("nan"),
            ci_low=lo,
            ci_high=hi,
            n=int(values.size),
            higher_is_better=self.higher_is_better,
            details=details or {},
            judges={role: j if isinstance(j, dict) else j.spec() for role, j in (judges or {}).items()},
        )
