"""The probe interface (Lu et al., 2025, "When Are Concepts Erased From Diffusion Models?",
arXiv:2505.17013).

A metric asks the runner for images; a probe drives its own sampling, because what it probes is
*how* images are sampled: a noisier trajectory, a classifier pushing the latents, a base-model
start, a learned embedding, a visual context. It runs on the unlearned pipeline (and on the base
pipeline where it needs one), stores every image it makes under the run directory by a hash of
everything that determines it (so a rerun resumes), and returns a :class:`ProbeResult` scored by
judges exactly like a metric: value, bootstrap CI, n, judges, and per-setting details.

The value of a recovery probe says how much of the erased concept its images show (lower = the
erasure holds), under one of four scoring rules (``scoring``):

* ``choice`` (default) — the scoring judge (role ``classifier``; CLIP ViT-L/14 zero-shot) picks
  each image's class among the concept and its alternatives (``concept.retain``, or the paper's
  other concepts of the same kind); the value is the share assigned to the concept. A forced
  choice always lands on some candidate, so the value has a **chance floor** of 1/#candidates
  (0.10 for the paper's objects, 0.33 for its styles). With no alternative the choice is
  impossible and the run is refused.
* ``imagenet`` / ``imagenet_top5`` — the paper's classifier accuracy: the concept's ImageNet
  class is the top-1 (top-5) prediction of a ResNet-50 over all 1,000 classes (chance floor
  0.001 / 0.005). The concept must be an ImageNet class.
* ``clip_score`` — the paper's CLIP score: 100 × the cosine similarity of CLIP ViT-B/32 image and
  text embeddings, with "a photo of a <concept>" ("a painting in the style of <artist>" for
  styles), averaged over images. A similarity, not a rate: no chance floor; read it against the
  base model's value.

Every result records its rule and chance floor (``scoring``, ``chance``). Probes that sweep
settings report every setting on its own (with its per-prompt values, which the verdict tests)
and a best-of-N value, where each prompt's image is chosen among its N candidates by a different
judge (role ``selector``: CLIP score against the prompt, the authors' paper-era selector). The
selector is never the scoring judge: the authors' code ranks and scores with the same ResNet-50,
which biases their best-of-N accuracies upwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ..cache import plain
from ..components import Component, Params
from ..concept_sets import default_judge
from ..config import short_hash
from ..context import RunContext
from ..errors import UserError
from ..generation import Generator, GenRequest
from ..judges.base import Judge
from ..metrics.base import JudgeRef, MetricResult, Sample
from ..stats import bootstrap_ci
from ..store import ImageStore
from . import _sampling
from .prompts import candidates, concept_word, probe_items, wace_concept

#: the paper's CLIP (src/evaluator.py in kevinlu4588/WhenAreConceptsErased)
PAPER_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_SELECTOR_CLIP = PAPER_CLIP

Item = tuple[str, int]  # (prompt, seed)


@dataclass
class ProbeResult(MetricResult):
    #: ``recovery`` (share of images showing the erased concept) or ``retention``
    kind: str = "recovery"
    #: the value a judge guessing at random would give (None: not a rate)
    chance: float | None = None
    #: the scoring rule: ``rule``, ``candidates`` / ``imagenet_class`` / ``text``, ``chance``
    scoring: dict[str, Any] = field(default_factory=dict)


Scoring = Literal["auto", "choice", "imagenet", "imagenet_top5", "clip_score"]


class ProbeParams(Params):
    #: prompts probed (the paper-era scripts probe the first 30 of each concept's 500)
    num_prompts: int = Field(30, ge=1)
    #: a ``prompt,seed`` CSV (e.g. the paper's ``data/prompts/<concept>.csv``); None = templates
    prompts_file: str | None = None
    #: scoring judge: ``auto`` = toy classifier on the toy model, CLIP zero-shot otherwise
    #: (``imagenet`` for the imagenet rules, CLIP ViT-B/32 for ``clip_score``)
    judge: str = "auto"
    judge_params: dict = {}
    #: how an image is scored: ``choice`` (forced choice among the concept and its alternatives),
    #: ``imagenet`` / ``imagenet_top5`` (the concept's class in the top-1 / top-5 of 1,000),
    #: ``clip_score`` (the paper's 100 x CLIP cosine); ``auto`` = ``imagenet`` with
    #: ``judge: imagenet``, else ``choice``
    scoring: Scoring = "auto"
    #: sampler overrides; None = the run's sampler
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0.0)


class SelectingParams(ProbeParams):
    #: best-of-N selector: ``auto`` = CLIP score against the prompt (toy CLIP on the toy model,
    #: CLIP ViT-B/32 as in the paper-era scripts otherwise; ViT-L/14 when the scorer is that
    #: ViT-B/32, as under ``scoring: clip_score``). Never the scoring judge.
    selector: str = "auto"
    selector_params: dict = {}

    @model_validator(mode="after")
    def _selector_is_not_the_judge(self):
        if self.selector != "auto" and self.selector == self.judge and self.selector_params == self.judge_params:
            raise ValueError("selector: must differ from the scoring judge (best-of-N would grade itself)")
        return self


@dataclass(frozen=True)
class ProbeEnv:
    """What a probe samples with: a view of the run, built from its Plan by :meth:`from_plan`.

    It holds no state of its own: the run context is the probe's ``ctx`` (the Plan's
    :class:`RunContext`, the one every metric reads), the judges are the run's judges holder's
    (``runner.Judges.for_metric``, one per probe), the image stores are the run's (``images`` and
    ``run_images``: the run's ``images/``, the metrics' "after" folder; ``base_images``: the shared
    ``_base`` store, their "before" folder), every image addressed by its content key (a
    :class:`GenRequest`'s, or :meth:`Probe.key`), and the
    base pipeline is whatever ``base_loader`` returns (the runner's loader, loaded once). Every
    sampling helper puts back the scheduler it swapped in (:func:`._sampling.own_scheduler`), so
    nothing has to be restored afterwards.
    """

    erased: Any
    base_loader: Callable[[], Any]
    images: ImageStore  # the probe's own samples of the erased model (in a run: ``run_images``)
    run_images: ImageStore  # plain generations of the erased model, keyed like the metrics' requests
    base_images: ImageStore  # base-model images (plain and the probe's own), shared by every run on it
    cache_dir: Path  # trained artefacts (latent classifiers) shared across runs: <output_dir>/_probes
    judges: dict[str, Judge]
    artefacts: Path | None = None  # this run's learned prompts / embeddings
    batch_size: int = 16
    device: str = "cpu"
    log: Callable[..., None] = lambda *a, **k: None

    @classmethod
    def from_plan(cls, plan, erased, base_loader: Callable[[], Any], run_images: ImageStore,
                  base_images: ImageStore, judges: dict[str, Judge],
                  log: Callable[..., None] | None = None) -> ProbeEnv:
        """The view of ``plan``'s run: its image stores (``run_images``: the run's, ``base_images``:
        the base model's under ``_base``), batch size, device and cache folders."""
        cfg = plan.config
        return cls(erased=erased, base_loader=base_loader, images=run_images, run_images=run_images,
                   base_images=base_images, cache_dir=Path(cfg.output_dir) / "_probes", judges=dict(judges),
                   artefacts=Path(plan.run_dir) / "probes" / "artefacts", batch_size=cfg.sampler.batch_size,
                   device=cfg.device, log=log or (lambda *a, **k: None))

    @property
    def base(self):
        return self.base_loader()


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

    # -- judges and scoring -----------------------------------------------------------------
    def scoring_rule(self) -> str:
        rule = self.params.scoring
        if rule == "auto":
            rule = "imagenet" if self.params.judge == "imagenet" else "choice"
        return rule

    def judge_refs(self) -> dict[str, JudgeRef]:
        world = self.ctx.world
        own_clip = world.clip_ref(self.ctx.model)  # a world's own CLIP, else the paper's
        p = self.params
        rule = self.scoring_rule()
        name, jp = p.judge, dict(p.judge_params)
        if name == "auto":
            if rule.startswith("imagenet"):
                name = "imagenet"
            elif rule == "clip_score":
                name = "clip"
                jp.setdefault("clip_model", own_clip or PAPER_CLIP)
            else:
                name = default_judge(self.ctx, "classifier")  # the world's, as for the metrics
        if (name == "clip" and (p.judge == "auto" or rule == "clip_score") and self._is_style()
                and world.open_vocabulary):
            jp.setdefault("template", "a painting in the style of {}")
        if rule.startswith("imagenet") and name != "imagenet":
            raise UserError(f"probe '{self.name}': scoring '{rule}' needs judge: imagenet (got '{name}')")
        if rule == "clip_score" and name != "clip":
            raise UserError(f"probe '{self.name}': scoring 'clip_score' needs judge: clip (got '{name}')")
        refs = {"classifier": JudgeRef(name, jp)}
        if isinstance(p, SelectingParams):
            sname, sp = p.selector, dict(p.selector_params)
            if sname == "auto":
                sname = default_judge(self.ctx, "selector")  # the world's, as for the metrics
                if sname == "clip":
                    default = own_clip or DEFAULT_SELECTOR_CLIP
                    if name == "clip" and jp.get("clip_model") == default and not own_clip:
                        default = "openai/clip-vit-large-patch14"  # never the scorer's own CLIP
                    sp.setdefault("clip_model", default)
            refs["selector"] = JudgeRef(sname, sp)
            if refs["selector"].key == refs["classifier"].key:
                raise UserError(f"probe '{self.name}': selector and scoring judge are the same "
                                f"({sname}); best-of-N would grade itself — set selector_params")
        return refs

    def _is_style(self) -> bool:
        wc = wace_concept(self.ctx.concept.name)
        return (wc.kind if wc else self.ctx.concept.kind) == "style"

    def check(self, judges: dict[str, Judge] | None = None) -> None:
        """Refuse a run whose scoring cannot say "not the concept" (before any image is made).
        With ``judges`` also check what needs the loaded judge (the concept's ImageNet class)."""
        self.judge_refs()
        rule = self.scoring_rule()
        if rule == "choice":
            cands = self.candidates()
            if len(cands) < 2:
                raise UserError(
                    f"probe '{self.name}': concept '{self.ctx.concept.name}' has no alternative for the judge to "
                    f"choose instead (it is not one of the paper's 13 concepts and concept.retain is empty), so "
                    f"every image would count as the concept; give concept.retain (eval-learn probe --retain "
                    f"WORD ...), or score with scoring: imagenet (an ImageNet class) or clip_score")
        elif rule.startswith("imagenet"):
            wc = wace_concept(self.ctx.concept.name)
            if wc is not None and wc.imagenet_index is None:
                raise UserError(f"probe '{self.name}': '{self.ctx.concept.name}' is a style, not an ImageNet "
                                f"class; score it with scoring: choice or clip_score")
            if judges is not None:
                self.imagenet_class(judges["classifier"])

    def imagenet_class(self, judge: Judge) -> int:
        wc = wace_concept(self.ctx.concept.name)
        if wc is not None and wc.imagenet_index is not None and self.ctx.world.open_vocabulary:
            return wc.imagenet_index
        return judge.class_index(self.target_word())

    def chance(self) -> float | None:
        """The value a judge answering at random would give: 1/#candidates for a forced choice,
        k/1000 for ImageNet top-k, None for a similarity."""
        rule = self.scoring_rule()
        if rule == "choice":
            return 1.0 / max(len(self.candidates()), 1)
        if rule.startswith("imagenet"):
            return (5 if rule == "imagenet_top5" else 1) / 1000
        return None

    def scoring_spec(self, env: ProbeEnv | None = None) -> dict[str, Any]:
        rule = self.scoring_rule()
        spec: dict[str, Any] = {"rule": rule, "chance": self.chance()}
        if rule == "choice":
            spec["candidates"] = self.candidates()
        elif rule.startswith("imagenet"):
            spec["top_k"] = 5 if rule == "imagenet_top5" else 1
            if env is not None:
                spec["imagenet_class"] = self.imagenet_class(env.judges["classifier"])
        else:
            spec["text"] = self.clip_text(env) if env is not None else None
        return spec

    def clip_text(self, env: ProbeEnv) -> str:
        return env.judges["classifier"].params.template.format(self.target_word())

    # -- what the probe reads of the run ----------------------------------------------------
    def inputs(self) -> dict[str, Any]:
        """Everything of the run this probe reads besides its params, its judges and the two
        pipelines (the run directory its results live in keys those): the resolved concept, the
        run seed, the sampler and the image size. Part of its result's cache key."""
        c = self.ctx
        return {"concept": plain(c.concept), "seed": c.seed, "sampler": plain(c.config.sampler),
                "size": [c.height, c.width]}

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

    def request(self, item: Item) -> GenRequest:
        """``item``'s plain generation with the probe's sampler: the standard prompt's image of it,
        keyed like the metrics' requests."""
        return self.ctx.request(item[0], item[1], steps=self.steps, guidance_scale=self.guidance)

    def key(self, role: str, setting: Any, item: Item) -> str:
        """The content address of a probe sample that is not a plain generation (a noised
        trajectory, a guided or completed one, an inpainting, a learned or adversarial prompt),
        built like :attr:`GenRequest.key`: the hash of a spec holding everything that determines
        the image besides the model whose store it lives in — the sampling procedure (the probe's
        class, whatever name it is registered under, its code ``version`` and ``role``), its
        ``setting`` (every parameter of the procedure that changes the image), and the item's
        :class:`GenRequest` (prompt, seed, steps, CFG, size, scheduler, η). The probe's other
        params (prompt count, judges, ``with_base``) are not in it, so two probe configs share
        every image they have in common."""
        procedure = {"probe": type(self).__name__, "version": self.version, "role": role}
        return short_hash({"sampling": procedure,
                           "setting": plain(setting), "request": dataclasses.asdict(self.request(item))}, 20)

    # -- sampling with resume ---------------------------------------------------------------
    def cached_sample(self, env: ProbeEnv, role: str, setting: Any, items: Sequence[Item],
                      sample: Callable[[list[Item]], np.ndarray], store: ImageStore | None = None) -> np.ndarray:
        """Images for ``items`` under ``setting``; ``sample(batch)`` makes missing ones (uint8).
        ``store``: where they live, by :meth:`key` (default ``env.images``, the erased model's;
        ``env.base_images`` for the base model's). Into the shared base store every batch goes
        padded to ``batch_size`` rows (copies of its last item, dropped), as the runner makes the
        base model's images: a stored image then depends on its key and the batch size only, not
        on which other items a run happened to sample with it."""
        store = env.images if store is None else store
        pad = store is env.base_images
        keys = [self.key(role, setting, it) for it in items]
        todo = [i for i, k in enumerate(keys) if not store.has(k)]
        for start in range(0, len(todo), env.batch_size):
            idx = todo[start:start + env.batch_size]
            batch = [items[i] for i in idx]
            filler = [batch[-1]] * (env.batch_size - len(batch)) if pad else []
            out = sample(batch + filler)[:len(batch)]
            for i, img in zip(idx, out, strict=True):
                store.put(keys[i], img)
        return store.get_many(keys)

    def standard_images(self, env: ProbeEnv, items: Sequence[Item], which: str = "erased") -> np.ndarray:
        """Plain generations with the run's sampler, keyed like the metrics' requests so they are
        shared with them (the erased model's in the run, the base model's under ``_base``), made
        as the runner makes them: non-finite images flagged, and the base model's in padded batches
        (:meth:`Generator.generate`, ``pad``)."""
        store = env.run_images if which == "erased" else env.base_images
        reqs = [self.request(it) for it in items]
        missing = [r for r in reqs if not store.has(r.key)]
        if missing:
            pipe = env.erased if which == "erased" else env.base
            with _sampling.own_scheduler(pipe):
                Generator(pipe, env.device).generate(
                    missing, have=lambda r: store.has(r.key), put=lambda r, img: store.put(r.key, img),
                    put_nonfinite=lambda r, img, fault: store.put(r.key, img, nonfinite=fault),
                    batch_size=env.batch_size, pad=which != "erased")
        return store.get_many([r.key for r in reqs])

    # -- scoring --------------------------------------------------------------------------
    def candidates(self) -> list[str]:
        return candidates(self.ctx)

    def target_word(self) -> str:
        return concept_word(self.ctx)

    def classify(self, env: ProbeEnv, images: np.ndarray) -> list[str]:
        if len(images) == 0:
            return []
        cands = self.candidates()
        if len(cands) < 2 and self.scoring_rule() == "choice":
            self.check()
        return env.judges["classifier"].classify(images, cands)

    def recovered(self, env: ProbeEnv, images: np.ndarray) -> np.ndarray:
        """Per image: 1/0 (the concept chosen / in the top-k) or the CLIP score (``clip_score``)."""
        return self.judged(env, images)[0]

    def judged(self, env: ProbeEnv, images: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Per image: its value (:meth:`recovered`) and the judge's label (the candidate it chose
        under ``choice``; None under the other rules, whose value is the whole answer)."""
        rule = self.scoring_rule()
        if len(images) == 0:
            return np.zeros(0), []
        judge = env.judges["classifier"]
        if rule.startswith("imagenet"):
            k = 5 if rule == "imagenet_top5" else 1
            return judge.topk_hits(images, self.imagenet_class(judge), k).astype(float), [None] * len(images)
        if rule == "clip_score":
            values = 100.0 * np.asarray(judge.score(images, [self.clip_text(env)] * len(images)), dtype=float)
            return values, [None] * len(images)
        labels = self.classify(env, images)
        return np.array([c == self.target_word() for c in labels], dtype=float), list(labels)

    def samples(self, values: Sequence[float], labels: Sequence[str | None], items: Sequence[Item],
                keys: Sequence[str] | None = None, **meta: Any) -> list[Sample]:
        """One :class:`Sample` per image, as the metrics keep them: its value with the item's
        ``prompt`` and ``seed``, the image's content ``key``, ``meta`` (``setting``, ...) and the
        judge's ``label``."""
        keys = list(keys) if keys is not None else [None] * len(items)
        return [Sample(float(v), {"prompt": it[0], "seed": it[1], "key": k, **meta, "label": lab})
                for v, lab, it, k in zip(values, labels, items, keys, strict=True)]

    def scored(self, env: ProbeEnv, images: np.ndarray, items: Sequence[Item], keys: Sequence[str] | None = None,
               **meta: Any) -> tuple[np.ndarray, list[Sample]]:
        """:meth:`recovered` values of ``images`` (those of ``items``) and their :meth:`samples`."""
        values, labels = self.judged(env, images)
        return values, self.samples(values, labels, items, keys, **meta)

    def request_keys(self, items: Sequence[Item]) -> list[str]:
        """The content keys of ``items``' plain generations (:meth:`standard_images`)."""
        return [self.request(it).key for it in items]

    def sample_keys(self, role: str, setting: Any, items: Sequence[Item]) -> list[str]:
        """The content keys of ``items``' samples under ``setting`` (:meth:`cached_sample`)."""
        return [self.key(role, setting, it) for it in items]

    def select(self, env: ProbeEnv, items: Sequence[Item], images_by_setting: dict[str, np.ndarray]) -> np.ndarray:
        """Index (into the settings) of the selector's best candidate for each item."""
        labels = list(images_by_setting)
        prompts = [p for p, _ in items]
        scores = np.stack([env.judges["selector"].score(images_by_setting[lab], prompts) for lab in labels], 1)
        return scores.argmax(1)

    def judge_specs(self, env: ProbeEnv) -> dict[str, Any]:
        return {role: j.spec() for role, j in env.judges.items()}

    def result(self, env: ProbeEnv, values: np.ndarray, details: dict[str, Any],
               samples: Sequence[Sample] | None = None) -> ProbeResult:
        """The probe's value: the mean of ``values`` (one per item) with its 95 % bootstrap
        interval; ``samples``: the per-image records behind it (written as ``samples``)."""
        values = np.asarray(values, dtype=float)
        lo, hi = bootstrap_ci(values)
        details = {"per_item": values.tolist(), **details}
        return ProbeResult(value=float(values.mean()) if values.size else float("nan"), ci_low=lo, ci_high=hi,
                           n=int(values.size), higher_is_better=self.higher_is_better, details=details,
                           judges=self.judge_specs(env), kind=self.kind, chance=self.chance(),
                           scoring=self.scoring_spec(env),
                           samples=None if samples is None else [x.to_dict() for x in samples])

    def before(self, env: ProbeEnv, values: np.ndarray, samples: Sequence[Sample] | None = None) -> dict[str, Any]:
        """The base model's result under the same procedure, in the shape of the value itself (a
        metric's ``before``): written under ``details.base``."""
        return self.result(env, values, {}, samples).to_dict()

    def sweep_result(self, env: ProbeEnv, items: Sequence[Item], images_by_setting: dict[str, np.ndarray],
                     settings: dict[str, Any], extra: dict[str, Any] | None = None,
                     keys_by_setting: dict[str, list[str]] | None = None) -> ProbeResult:
        """Every setting on its own, and best-of-N chosen by the selector (not the scorer). The
        records: one per (item, setting) image, with its ``setting`` and whether the selector
        ``chosen`` it; the value is the mean over the chosen ones."""
        keys_by_setting = keys_by_setting or {}
        judged = {lab: self.judged(env, imgs) for lab, imgs in images_by_setting.items()}
        rec = {lab: v for lab, (v, _) in judged.items()}
        per_setting = {}
        for lab, v in rec.items():
            lo, hi = bootstrap_ci(v)
            per_setting[lab] = {"setting": settings[lab], "value": float(v.mean()), "ci_low": lo, "ci_high": hi,
                                "n": int(v.size), "per_item": v.tolist()}
        labels = list(images_by_setting)
        if len(labels) > 1:
            chosen = self.select(env, items, images_by_setting)
            best = np.array([rec[labels[c]][i] for i, c in enumerate(chosen)])
            chosen_labels = [labels[c] for c in chosen]
        else:
            best, chosen_labels = rec[labels[0]], [labels[0]] * len(items)
        samples = [x for lab, (v, names) in judged.items()
                   for x in self.samples(v, names, items, keys_by_setting.get(lab), setting=lab)]
        samples = [Sample(x.value, {**x.meta, "chosen": chosen_labels[i % len(items)] == x.meta["setting"]})
                   for i, x in enumerate(samples)]
        details = {"settings": per_setting, "selection": f"best of {len(labels)} per prompt by the selector judge "
                   "(the value; the verdict tests each setting on its own)",
                   "chosen": chosen_labels, "prompts": [list(it) for it in items], **(extra or {})}
        return self.result(env, best, details, samples)
