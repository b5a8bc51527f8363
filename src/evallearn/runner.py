"""The run lifecycle, top to bottom:

    prepare   config -> resolved spec, model info, compatibility, components, requests
    load      base pipeline (hub id | folder | toy)
    before    base-model images and metrics, computed once per base model and reused
    technique apply (or load the cached edit)
    generate  every missing image of the run, batched and seeded
    score     judges -> metrics
    write     results.json (atomic) and report.html

Everything before ``load`` reads only configs, so a bad run fails in a second without
loading weights.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__, registry
from .config import RunConfig, short_hash, spec_dict, spec_hash
from .context import RunContext
from .errors import UserError
from .generation import Generator, GenRequest, dedupe
from .judges.base import Judge
from .metrics._judging import capability_problem
from .metrics.base import Metric, MetricResult
from .models.loading import ModelInfo, load_pipeline, resolve_model
from .store import ImageStore, RunStore, atomic_write_json
from .techniques.base import Technique


@dataclass
class Plan:
    config: RunConfig  # resolved: component params filled with their defaults
    model: ModelInfo
    technique: Technique
    metrics: dict[str, Metric]
    requests: list[GenRequest]
    run_dir: Path
    ctx: RunContext
    notes: list[str] = field(default_factory=list)

    @property
    def spec_hash(self) -> str:
        return run_hash(self.config, self.model)


def run_hash(config: RunConfig, model: ModelInfo) -> str:
    """The resolved config's spec hash, salted with the model's content fingerprint."""
    return short_hash({"spec": spec_hash(config), "model": model.fingerprint})


def _resolve_ref(ref, cls, where: str):
    params = cls.parse_params(ref.params, f"{where}.params")
    return ref.model_copy(update={"params": params.model_dump(mode="json")}), params


def prepare(config: RunConfig) -> Plan:
    """Resolve and check a config without loading any weights."""
    tech_cls = registry.techniques.get(config.technique.name)
    tech_ref, tech_params = _resolve_ref(config.technique, tech_cls, "technique")
    metric_refs, metric_params, seen = [], [], set()
    for i, ref in enumerate(config.metrics):
        cls = registry.metrics.get(ref.name)
        if ref.key in seen:
            raise UserError(f"config: metrics[{i}]: '{ref.key}' appears twice; give one an 'id'")
        seen.add(ref.key)
        r, p = _resolve_ref(ref, cls, f"metrics[{i}]")
        metric_refs.append(r)
        metric_params.append((cls, p))
    for i, ref in enumerate(config.probes):
        cls = registry.probes.get(ref.name)
        cls.parse_params(ref.params, f"probes[{i}].params")
    resolved = config.model_copy(update={"technique": tech_ref, "metrics": tuple(metric_refs)})

    model = resolve_model(config.model)
    if resolved.sampler.guidance_scale is None:  # the model's own guidance, fixed before hashing
        sampler = resolved.sampler.model_copy(update={"guidance_scale": model.default_guidance})
        resolved = resolved.model_copy(update={"sampler": sampler})
    kind = config.concept.kind
    problems = []
    why = tech_cls.supports.why_not(kind, model.tags)
    if why:
        problems.append(f"technique '{tech_cls.name}': {why}")
    for ref, (cls, _) in zip(metric_refs, metric_params, strict=True):
        why = cls.supports.why_not(kind, model.tags)
        if why:
            problems.append(f"metric '{ref.key}': {why}")
    for ref in config.probes:
        why = registry.probes.get(ref.name).supports.why_not(kind, model.tags)
        if why:
            problems.append(f"probe '{ref.name}': {why}")
    if problems:
        raise UserError("incompatible run: " + "; ".join(problems))

    run_dir = Path(config.output_dir) / f"{config.name}-{run_hash(resolved, model)}"
    tech_spec = {k: spec_dict(resolved)[k] for k in ("model", "technique", "concept", "seed", "dtype")}
    tech_key = short_hash({**tech_spec, "fingerprint": model.fingerprint})
    ctx = RunContext(resolved, model, cache_dir=Path(config.output_dir) / "_techniques" / f"{tech_cls.name}-{tech_key}")
    metrics = {ref.key: cls(p, ctx) for ref, (cls, p) in zip(metric_refs, metric_params, strict=True)}
    if config.probes:  # a probe whose judge could not say "not the concept" is refused here
        from .probes.phase import check_probes

        check_probes(config, ctx)
    # Judges are components too: check their params now, not after generation.
    for key, m in metrics.items():
        for role, jref in m.judge_refs().items():
            jcls = registry.judges.get(jref.name)
            jcls.parse_params(jref.params, f"metrics '{key}' judge '{role}'")
            why = jcls.supports.why_not(kind, model.tags)
            if why:
                raise UserError(f"incompatible run: metric '{key}' uses judge '{jref.name}': {why}")
            why = capability_problem(key, getattr(m, "judge_needs", {}), role, jref.name, jcls)
            if why:
                raise UserError(why)
    requests: list[GenRequest] = []
    per_metric = {}
    for key, m in metrics.items():
        reqs = m.requests()
        if not reqs:
            raise UserError(f"config: metric '{key}' has no prompts to generate (check its params and concept)")
        per_metric[key] = reqs
        requests.extend(reqs)
    plan = Plan(resolved, model, tech_cls(tech_params), metrics, dedupe(requests), run_dir, ctx)
    plan.ctx.extras["requests_by_metric"] = per_metric
    return plan


# -- phases ---------------------------------------------------------------------------------


class Judges:
    """Judges loaded once per run and shared by every metric that names them."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._cache: dict[tuple, Judge] = {}

    def for_metric(self, metric: Metric) -> dict[str, Judge]:
        out = {}
        for role, ref in metric.judge_refs().items():
            if ref.key not in self._cache:
                cls = registry.judges.get(ref.name)
                self._cache[ref.key] = cls(cls.parse_params(ref.params, f"judge '{ref.name}'"), self.device)
            out[role] = self._cache[ref.key]
        return out


def generate(plan: Plan, pipe, images: ImageStore, label: str, progress) -> int:
    engine = Generator(pipe, plan.config.device)
    todo = [r for r in plan.requests if not images.has(r.key)]
    task = progress.add_task(f"generate ({label})", total=len(plan.requests),
                             completed=len(plan.requests) - len(todo), info="")
    written = engine.generate(
        plan.requests,
        have=lambda r: images.has(r.key),
        put=lambda r, img: images.put(r.key, img),
        batch_size=plan.config.sampler.batch_size,
        progress=lambda n: progress.advance(task, n),
    )
    progress.update(task, completed=len(plan.requests))
    return written


def score(plan: Plan, images: ImageStore, judges: Judges) -> dict[str, MetricResult]:
    results = {}
    for key, metric in plan.metrics.items():
        metric.reset()
        reqs = plan.ctx.extras["requests_by_metric"][key]
        metric.update(reqs, images.get_many([r.key for r in reqs]), judges.for_metric(metric))
        result = metric.compute()
        result.details.setdefault("seeds", sorted({r.seed for r in reqs}))
        results[key] = result
    return results


def base_dir(plan: Plan) -> Path:
    c = plan.config
    base = c.base_model or c.model
    info = plan.model if base == c.model else resolve_model(base)
    key = short_hash({"model": base, "fingerprint": info.fingerprint, "dtype": c.dtype, "device": c.device})
    return Path(c.output_dir) / "_base" / key


def bind_pipeline(plan: Plan, pipe, stage: str) -> None:
    """Let metrics whose prompts depend on the pipeline (adversarial attacks) recompute their
    requests for ``pipe`` (stage ``before`` = base model, ``after`` = unlearned model)."""
    by_metric = plan.ctx.extras["requests_by_metric"]
    changed = [k for k, m in plan.metrics.items() if m.bind_pipeline(pipe, stage)]
    if not changed:
        return
    old = {r for k in changed for r in by_metric[k]}
    for k in changed:
        by_metric[k] = plan.metrics[k].requests()
    kept = {r for k, reqs in by_metric.items() for r in reqs}
    plan.requests = dedupe([r for r in plan.requests if r not in old or r in kept]
                           + [r for k in changed for r in by_metric[k]])


def before_phase(plan: Plan, pipe, judges: Judges, progress, log) -> dict[str, MetricResult]:
    """Base-model images and metric values, each computed once per base model."""
    bind_pipeline(plan, pipe, "before")
    root = base_dir(plan)
    images = ImageStore(root / "images")
    written = generate(plan, pipe, images, "base model", progress)
    log("base_images", written=written)
    out = {}
    for key, metric in plan.metrics.items():
        reqs = plan.ctx.extras["requests_by_metric"][key]
        mkey = short_hash({"metric": metric.name, "params": metric.params.model_dump(mode="json"),
                           "judges": {r: j.key for r, j in metric.judge_refs().items()},
                           "requests": [r.key for r in reqs]})
        path = root / "metrics" / f"{metric.name}-{mkey}.json"
        if path.exists():
            import json

            out[key] = MetricResult(**json.loads(path.read_text()))
            continue
        single = Plan(plan.config, plan.model, plan.technique, {key: metric}, reqs, plan.run_dir, plan.ctx)
        out[key] = score(single, images, judges)[key]
        atomic_write_json(path, out[key].to_dict())
    return out


def environment(device: str) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    versions = {}
    for pkg in ("eval-learn", "torch", "diffusers", "transformers", "numpy", "pillow", "safetensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    versions["eval-learn"] = versions["eval-learn"] or __version__
    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(0)})"
    return {"versions": versions, "device": dev, "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads()}


def run(config: RunConfig, console=None) -> dict[str, Any]:
    from rich.console import Console

    from .progress import new_progress

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def phase(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t = time.perf_counter()
    plan = prepare(config)
    t = phase("prepare", t)
    store = RunStore(plan.run_dir)
    with store, new_progress() as progress:
        store.write_config(yaml.safe_dump(plan.config.model_dump(mode="json"), sort_keys=False))
        store.log("start", spec=plan.spec_hash, requests=len(plan.requests))
        cfg = plan.config
        judges = Judges(cfg.device)

        base_ref = cfg.base_model or cfg.model
        base_info = plan.model if base_ref == cfg.model else resolve_model(base_ref)
        pipe = load_pipeline(base_info, cfg.device, cfg.dtype)
        t = phase("load", t)

        before: dict[str, MetricResult] = {}
        same_model = base_ref == cfg.model and not plan.technique.changes_model
        if cfg.base_metrics and plan.metrics and not same_model:
            before = before_phase(plan, pipe, judges, progress, store.log)
            store.log("before_done")
        t = phase("before", t)

        if base_ref != cfg.model:
            pipe = load_pipeline(plan.model, cfg.device, cfg.dtype)
        pipe, cached = plan.technique.load_or_apply(pipe, plan.ctx)
        bind_pipeline(plan, pipe, "after")
        store.log("technique_done", cached=cached)
        t = phase("technique", t)

        written = generate(plan, pipe, store.images, "after", progress)
        store.log("images_done", written=written)
        t = phase("generate", t)

        after = score(plan, store.images, judges)
        t = phase("score", t)

        probes_out = None
        if cfg.probes:
            from .probes.phase import run_probes

            probes_out = run_probes(plan, pipe, lambda: load_pipeline(base_info, cfg.device, cfg.dtype),
                                    store.images, ImageStore(base_dir(plan) / "images"), judges, store.log, progress)
            t = phase("probes", t)

        metrics_out = {}
        for key, res in after.items():
            entry = {"after": res.to_dict(), "before": before[key].to_dict() if key in before else None}
            if key in before:
                entry["delta"] = res.value - before[key].value
            metrics_out[key] = entry
            store.log("metric", id=key, value=res.value)
        timings["total"] = round(time.perf_counter() - t_start, 3)
        results = {
            "run": {"name": cfg.name, "spec_hash": plan.spec_hash, "dir": str(plan.run_dir),
                    "eval_learn": __version__},
            "config": plan.config.model_dump(mode="json"),
            "model": plan.model.describe(),
            "technique": {"name": plan.technique.name, "params": plan.technique.params.model_dump(mode="json"),
                          "cached": cached, "cache_dir": str(plan.ctx.cache_dir) if plan.technique.edits else None},
            "metrics": metrics_out,
            **({"probes": probes_out} if probes_out is not None else {}),
            "seeds": {"run_seed": cfg.seed, "rule": "each image's generator is seeded with its request's seed",
                      "n_requests": len(plan.requests)},
            "environment": environment(cfg.device),
            "timings": timings,
        }
        store.write_results(results)
        from .report.html import write_report

        write_report(plan.run_dir, results, store.images, plan.requests)
        store.log("done")
    return results
