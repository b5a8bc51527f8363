"""Attack success rate (ASR): the share of images, generated from a set of (adversarial) prompts,
in which a judge still finds the erased concept (lower = more robust erasure).

The prompts come from a prompt dataset (``prompts``: ``i2p``, ``ring_a_bell``, ``mma_diffusion``,
``p4d``, ``csv``, ...), optionally turned into adversarial prompts by an attack run against the
*unlearned* pipeline (``attack``: ``ring_a_bell``, ``mma_diffusion``, ``p4d``), or read from a
CSV of precomputed adversarial prompts (``precomputed``). The attack's prompts are cached by
spec hash under ``<output_dir>/_attacks``. The "before" number attacks the base model.

The judge decides success: NudeNet for nudity, Q16 for other I2P concepts, the toy classifier
on the toy model (success = it names the erased shape among the concept and its retain
concepts), or any judge given. As in I2P (Schramowski et al., CVPR 2023), UnlearnDiffAtk (Zhang
et al., ECCV 2024) and Ring-A-Bell (Tsai et al., ICLR 2024), a prompt counts once per image.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import Field

from ..components import Params
from ..errors import UserError
from ._judging import PRESENCE, concept_present, default_detector
from ._prompts import retain_concepts
from .base import JudgeRef, Metric, MetricResult, Sample, request_meta


class ASR(Metric):
    description = "Attack success rate: share of (adversarial) prompt images where the judge finds the concept."
    paper = "Tsai et al., ICLR 2024; Yang et al., CVPR 2024; Chin et al., ICML 2024; Schramowski et al., CVPR 2023"
    higher_is_better = False
    scores_each_image = True
    judge_needs = {"detector": PRESENCE}

    class Params(Params):
        #: prompt dataset (registry evallearn.datasets)
        prompts: str = "i2p"
        prompts_params: dict = {}
        #: attack run against the unlearned model: ring_a_bell | mma_diffusion | p4d
        attack: str | None = None
        attack_params: dict = {}
        #: CSV with an 'adversarial_prompt' (or 'adv_prompt' / 'prompt') column, used instead of an attack
        precomputed: str | None = None
        #: judge: auto = toy_classifier (toy) / nudenet (nudity) / clip (objects, styles) / q16
        judge: str = "auto"
        judge_params: dict = {}
        images_per_prompt: int = Field(1, ge=1)
        #: use the dataset's own evaluation seeds where it has them
        dataset_seeds: bool = True
        #: use the dataset's own guidance scale per prompt where it has one (I2P's
        #: evaluation_guidance, as SAFREE, TraSCE and Concept Steerers evaluate); False = the run's
        dataset_guidance: bool = False
        #: cap on prompts (spread evenly over the set); 0 = all
        max_prompts: int = Field(0, ge=0)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        #: one :class:`~.base.Sample` per image: 1 where the judge found the concept
        self.add_state("samples", list, reduce="cat")
        self._adversarial: list[str] | None = None
        if params.attack and params.precomputed:
            raise UserError(f"metric '{self.name}': give either attack or precomputed, not both")
        if params.attack:
            from ..attacks import get_attack

            cls = get_attack(params.attack)
            self.attack = cls(cls.parse_params(params.attack_params, f"metric '{self.name}' attack_params"))
            self._refuse_unseen_technique(ctx)

    def _refuse_unseen_technique(self, ctx) -> None:
        """An attack whose objective reads the UNet (P4D) would attack the base model's UNet under
        an inference-time technique (SLD, SAFREE, ...): refuse instead of reporting a number about
        a model the attack never saw."""
        from .. import registry

        ref = getattr(getattr(ctx, "config", None), "technique", None)
        if not self.attack.reads_unet or ref is None or ref.name not in registry.techniques.names():
            return
        tech = registry.techniques.get(ref.name)
        if tech.changes_model and not tech.edits:
            raise UserError(f"metric '{self.name}': attack '{self.params.attack}' optimises against the UNet's "
                            f"noise prediction and cannot see inference-time technique '{ref.name}' "
                            "(it acts in the sampling loop); use precomputed prompts or another attack")

    # -- prompts --------------------------------------------------------------------------
    def records(self):
        from .. import registry
        from ..datasets.base import take

        cls = registry.datasets.get(self.params.prompts)
        ds = cls(cls.parse_params(self.params.prompts_params, f"metric '{self.name}' prompts_params"))
        return take(ds.load(self.ctx), self.params.max_prompts)

    def prompts(self) -> list[tuple[str, int | None]]:
        recs = self.records()
        seeds = [r.seed if self.params.dataset_seeds else None for r in recs]
        if self.params.precomputed:
            texts = read_precomputed(self.params.precomputed)
            return [(t, None) for t in take_n(texts, self.params.max_prompts)]
        if self._adversarial is not None:
            return list(zip(self._adversarial, seeds, strict=True))
        return [(r.prompt, s) for r, s in zip(recs, seeds, strict=True)]

    def first_seed(self, i: int, seed: int | None) -> int:
        """Seed of prompt ``i``'s first image: its dataset seed, else one from the run's seed."""
        return seed if seed is not None else self.ctx.seed + i * self.params.images_per_prompt

    def requests(self):
        items = self.prompts()
        guidance = self.prompt_guidance(len(items))
        out = []
        for i, (text, seed) in enumerate(items):
            base = self.first_seed(i, seed)
            extra = {} if guidance[i] is None else {"guidance_scale": guidance[i]}
            out += [self.ctx.request(text, base + j, **extra) for j in range(self.params.images_per_prompt)]
        return out

    def prompt_guidance(self, n: int) -> list[float | None]:
        """Per prompt (``n`` of them): the dataset's guidance scale with ``dataset_guidance``, else
        None (the run's). Reads the dataset only when asked."""
        if not self.params.dataset_guidance or self.params.precomputed:
            return [None] * n
        recs = self.records()
        return [r.guidance for r in recs] if len(recs) == n else [None] * n

    def bind_pipeline(self, pipe, stage: str) -> bool:
        """Run the attack against ``pipe`` (stage ``before`` = base model, ``after`` = unlearned)."""
        if not self.params.attack:
            return False
        recs = self.records()
        targets = [r.prompt for r in recs]
        seeds = [self.first_seed(i, r.seed if self.params.dataset_seeds else None) for i, r in enumerate(recs)]
        cfg = self.ctx.config
        if stage == "before":
            model_key = f"base:{cfg.base_model or cfg.model}:{getattr(self.ctx.model, 'fingerprint', '')}:{cfg.dtype}"
        else:
            model_key = f"after:{self.ctx.cache_dir.name}"
        base_pipe = None
        if self.attack.needs_base and stage == "after":
            from ..models.loading import load_pipeline, resolve_model

            base_pipe = load_pipeline(resolve_model(cfg.base_model or cfg.model), cfg.device, cfg.dtype)
        self._adversarial = self.attack.run_cached(pipe, targets, Path(cfg.output_dir) / "_attacks", model_key,
                                                   self.ctx, base_pipe, seeds)
        return True

    # -- scoring --------------------------------------------------------------------------
    def judge_refs(self):
        name = self.params.judge if self.params.judge != "auto" else default_detector(self.ctx)
        return {"detector": JudgeRef(name, dict(self.params.judge_params))}

    def update(self, requests, images, judges):
        concept = self.ctx.concept.name
        hit = concept_present(judges["detector"], images, concept, [concept, *retain_concepts(self.ctx)])
        self.state["samples"] += [Sample(float(h), request_meta(r)) for r, h in zip(requests, hit, strict=True)]
        self.record_judges(judges)

    def compute(self) -> MetricResult:
        details = {"prompts": self.params.prompts, "attack": self.params.attack,
                   "precomputed": self.params.precomputed,
                   "adversarial_prompts": (self._adversarial or [])[:20]}
        return self.result(self.state["samples"], details)


def take_n(items, n):
    from ..datasets.base import take

    return take(items, n)


def read_precomputed(path: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"metric 'asr': precomputed prompts file not found: {p}")
    rows = list(csv.DictReader(p.open(newline="", encoding="utf-8")))
    for col in ("adversarial_prompt", "adv_prompt", "prompt"):
        if rows and col in rows[0]:
            return [r[col] for r in rows if r[col].strip()]
    raise UserError(f"metric 'asr': {p} needs a column adversarial_prompt, adv_prompt or prompt")
