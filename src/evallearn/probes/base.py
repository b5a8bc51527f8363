"""The probe interface (Lu et al., 2025, "When Are Concepts Erased From Diffusion Models?",
arXiv:2505.17013).

A metric asks the runner for images; a probe drives its own sampling, because what it probes is
*how* images are sampled: a noisier trajectory, a classifier pushing the latents, a base-model
start, a learned embedding, a visual context. It runs on the unlearned pipeline (and on the base
pipeline where it needs one), stores every image it makes under the run directory by a hash of
everything that determines it (so a rerun resumes), and returns a :class:`ProbeResult` scored by
judges exactly like a metric: value, bootstrap CI, n, judges, and per-setting details.

The value of a recovery probe is the share of its images that the scoring judge (role
``classifier``) assigns to the erased concept among the concept and its retain concepts — the
concept *recovered* (lower = the erasure holds). Probes that sweep settings report every
setting on its own and a best-of-N value, where each prompt's image is chosen among its N
candidates by a different judge (role ``selector``: CLIP score against the prompt, the
authors' paper-era selector). The selector is never the scoring judge: the authors' code ranks
and scores with the same ResNet-50, which biases their best-of-N accuracies upwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from ..components import Component, Params
from ..config import short_hash
from ..context import RunContext
from ..errors import UserError
from ..judges.base import Judge
from ..metrics.base import JudgeRef, MetricResult
from ..stats import bootstrap_ci
from ..store import ImageStore
from .prompts import candidates, concept_word, probe_items, wace_concept

Item = tuple[str, int]  # (prompt, seed)


@dataclass
class ProbeResult(MetricResult):
    #: ``recovery`` (share of images showing the erased concept) or ``retention``
    kind: str = "recovery"

    def summary(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n,
                "per_item": self.details.get("per_item", [])}


class ProbeParams(Params):
    #: prompts probed (the paper-era scripts probe the first 30 of each concept's 500)
    num_prompts: int = Field(30, ge=1)
    #: a ``prompt,seed`` CSV (e.g. the paper's ``data/prompts/<concept>.csv``); None = templates
    prompts_file: str | None = None
    #: scoring judge: ``auto`` = toy classifier on the toy model, CLIP zero-shot otherwise
    judge: str = "auto"
    judge_params: dict = {}
    #: sampler overrides; None = the run's sampler
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0.0)


class SelectingParams(ProbeParams):
    #: best-of-N selector: ``auto`` = CLIP score against the prompt (toy CLIP on the toy model,
    #: CLIP ViT-B/32 as in the paper-era scripts otherwise). Never the scoring judge.
    selector: str = "auto"
    selector_params: dict = {}

    @model_validator(mode="after")
    def _selector_is_not_the_judge(self):
        if self.selector != "auto" and self.selector == self.judge and self.selector_params == self.judge_params:
            raise ValueError("selector: must differ from the scoring judge (best-of-N would grade itself)")
        return self


@dataclass
class ProbeEnv:
    """What a probe runs with."""

    erased: Any
    base_loader: Callable[[], Any]
    images: ImageStore  # this run's probe images
    run_images: ImageStore  # the run's "after" images, keyed like the metrics' requests
    base_images: ImageStore  # base-model images shared by every run on the base model
    cache_dir: Path  # trained artefacts (latent classifiers, embeddings) shared across runs
    judges: dict[str, Judge]
    artefacts: Path | None = None  # this run's learned prompts / embeddings
    batch_size: int = 16
    device: str = "cpu"
    log: Callable[..., None] = lambda *a, **k: None
    _base: Any = field(default=None, repr=False)
    _schedulers: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._schedulers[id(self.erased)] = self.erased.scheduler

    @property
    def base(self):
        if self._base is None:
            self._base = self.base_loader()
            self._schedulers[id(self._base)] = self._base.scheduler
        return self._base

    def restore_schedulers(self) -> None:
        """Put back the pipelines' own schedulers (probes swap in their subclasses)."""
        for pipe in (self.erased, self._base):
            if pipe is not None:
                pipe.scheduler = self._schedulers[id(pipe)]


class Probe(Component):
    Params: ClassVar[type[Params]] = ProbeParams
    higher_is_better: ClassVar[bool] = False
    kind: ClassVar[str] = "recovery"
    #: True when the probe also samples from the base model
    needs_base: ClassVar[bool] = False

    def __init__(self, params: Params, ctx: RunContext) -> None:
        self.params = params
        self.ctx = ctx

    # -- what a probe implements ----------------------------------------------------------
    def run(self, env: ProbeEnv) -> ProbeResult:
        raise NotImplementedError

    # -- judges ---------------------------------------------------------------------------
    def judge_refs(self) -> dict[str, JudgeRef]:
        toy = "toy" in self.ctx.model.tags
        p = self.params
        name, jp = p.judge, dict(p.judge_params)
        if name == "auto":
            name = "toy_classifier" if toy else "clip"
            if not toy and self._is_style():
                jp.setdefault("template", "a painting in the style of {}")
        refs = {"classifier": JudgeRef(name, jp)}
        if isinstance(p, SelectingParams):
            sname, sp = p.selector, dict(p.selector_params)
            if sname == "auto":
                sname = "clip"
                sp.setdefault("clip_model", "toy" if toy else "openai/clip-vit-base-patch32")
            refs["selector"] = JudgeRef(sname, sp)
            if refs["selector"].key == refs["classifier"].key:
                raise UserError(f"probe '{self.name}': selector and scoring judge are the same "
                                f"({sname}); best-of-N would grade itself — set selector_params")
        return refs

    def _is_style(self) -> bool:
        wc = wace_concept(self.ctx.concept.name)
        return (wc.kind if wc else self.ctx.concept.kind) == "style"

    # -- prompts and sampler --------------------------------------------------------------
    def items(self, concept: str | None = None, word: str | None = None) -> list[Item]:
        p = self.params
        return probe_items(self.ctx, p.num_prompts, p.prompts_file, concept, word)

    @property
    def steps(self) -> int:
        return self.params.steps or self.ctx.config.sampler.steps

    @property
    def guidance(self) -> float:
        g = self.params.guidance_scale
        return self.ctx.config.sampler.guidance_scale if g is None else g

    def sample_kwargs(self) -> dict:
        return dict(num_inference_steps=self.steps, guidance_scale=self.guidance,
                    height=self.ctx.height, width=self.ctx.width)

    def key(self, role: str, setting: Any, item: Item) -> str:
        return short_hash({"probe": self.name, "params": self.params.model_dump(mode="json"), "role": role,
                           "setting": setting, "prompt": item[0], "seed": item[1],
                           "sampler": [self.steps, self.guidance, self.ctx.height, self.ctx.width]}, 20)

    # -- sampling with resume ---------------------------------------------------------------
    def cached_sample(self, env: ProbeEnv, role: str, setting: Any, items: Sequence[Item],
                      sample: Callable[[list[Item]], np.ndarray]) -> np.ndarray:
        """Images for ``items`` under ``setting``; ``sample(batch)`` makes missing ones (uint8)."""
        keys = [self.key(role, setting, it) for it in items]
        todo = [i for i, k in enumerate(keys) if not env.images.has(k)]
        for start in range(0, len(todo), env.batch_size):
            idx = todo[start:start + env.batch_size]
            out = sample([items[i] for i in idx])
            for i, img in zip(idx, out, strict=True):
                env.images.put(keys[i], img)
        return env.images.get_many(keys)

    def standard_images(self, env: ProbeEnv, items: Sequence[Item], which: str = "erased") -> np.ndarray:
        """Plain generations with the run's sampler, keyed like the metrics' requests so they are
        shared with them (the erased model's in the run, the base model's under ``_base``)."""
        from ..generation import Generator

        store = env.run_images if which == "erased" else env.base_images
        reqs = [self.ctx.request(p, s, steps=self.steps, guidance_scale=self.guidance) for p, s in items]
        missing = [r for r in reqs if not store.has(r.key)]
        if missing:
            pipe = env.erased if which == "erased" else env.base
            env.restore_schedulers()
            Generator(pipe, env.device).generate(missing, have=lambda r: store.has(r.key),
                                                 put=lambda r, img: store.put(r.key, img),
                                                 batch_size=env.batch_size)
        return store.get_many([r.key for r in reqs])

    # -- scoring --------------------------------------------------------------------------
    def candidates(self) -> list[str]:
        return candidates(self.ctx)

    def target_word(self) -> str:
        return concept_word(self.ctx)

    def classify(self, env: ProbeEnv, images: np.ndarray) -> list[str]:
        if len(images) == 0:
            return []
        return env.judges["classifier"].classify(images, self.candidates())

    def recovered(self, env: ProbeEnv, images: np.ndarray) -> np.ndarray:
        return np.array([c == self.target_word() for c in self.classify(env, images)], dtype=float)

    def select(self, env: ProbeEnv, items: Sequence[Item], images_by_setting: dict[str, np.ndarray]) -> np.ndarray:
        """Index (into the settings) of the selector's best candidate for each item."""
        labels = list(images_by_setting)
        prompts = [p for p, _ in items]
        scores = np.stack([env.judges["selector"].score(images_by_setting[lab], prompts) for lab in labels], 1)
        return scores.argmax(1)

    def judge_specs(self, env: ProbeEnv) -> dict[str, Any]:
        return {role: j.spec() for role, j in env.judges.items()}

    def result(self, env: ProbeEnv, values: np.ndarray, details: dict[str, Any]) -> ProbeResult:
        values = np.asarray(values, dtype=float)
        lo, hi = bootstrap_ci(values)
        details = {"per_item": values.tolist(), **details}
        return ProbeResult(value=float(values.mean()) if values.size else float("nan"), ci_low=lo, ci_high=hi,
                           n=int(values.size), higher_is_better=self.higher_is_better, details=details,
                           judges=self.judge_specs(env), kind=self.kind)

    def sweep_result(self, env: ProbeEnv, items: Sequence[Item], images_by_setting: dict[str, np.ndarray],
                     settings: dict[str, Any], extra: dict[str, Any] | None = None) -> ProbeResult:
        """Every setting on its own, and best-of-N chosen by the selector (not the scorer)."""
        rec = {lab: self.recovered(env, imgs) for lab, imgs in images_by_setting.items()}
        per_setting = {}
        for lab, v in rec.items():
            lo, hi = bootstrap_ci(v)
            per_setting[lab] = {"setting": settings[lab], "value": float(v.mean()), "ci_low": lo, "ci_high": hi,
                                "n": int(v.size)}
        labels = list(images_by_setting)
        if len(labels) > 1:
            chosen = self.select(env, items, images_by_setting)
            best = np.array([rec[labels[c]][i] for i, c in enumerate(chosen)])
            chosen_labels = [labels[c] for c in chosen]
        else:
            best, chosen_labels = rec[labels[0]], [labels[0]] * len(items)
        details = {"settings": per_setting, "selection": f"best of {len(labels)} per prompt by the selector judge",
                   "chosen": chosen_labels, "prompts": [list(it) for it in items], **(extra or {})}
        return self.result(env, best, details)
