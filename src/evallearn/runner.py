"""The run lifecycle, top to bottom:

    prepare   config -> resolved spec, model info, compatibility, components, requests
    load      base pipeline (hub id | folder | toy)
    before    base-model images and metrics, computed once per base model and reused
    technique apply (or load the cached edit)
    generate  every missing image of the run, batched and seeded
    score     judges -> metrics
    write     results.json (atomic); the caller (the ``run`` and ``probe`` commands) adds
              report.html through the ``report`` hook

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
from .cache import Cache, component_spec, judge_spec, plain
from .concepts.concept import Concept
from .config import RunConfig, safe_join, short_hash, spec_hash
from .context import RunContext, resolve_concept, run_problems
from .engine import applied as engine_applied
from .engine import base_key as engine_base_key
from .engine import record as engine_record
from .errors import UserError
from .generation import Generator, GenRequest, dedupe
from .judges.base import Judge
from .metrics._judging import capability_problem
from .metrics.base import Metric, MetricResult
from .models.loading import ModelInfo, load_pipeline, resolve_model
from .results import SCHEMA_VERSION, RunResults, check_resumable
from .store import ImageStore, RunStore
from .techniques.base import Technique, technique_cache


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
        return run_hash(self.config, self.model, self.ctx.concept)


def run_hash(config: RunConfig, model: ModelInfo, concept: Concept | None = None) -> str:
    """The resolved config's spec hash, salted with the model's content fingerprint and the
    concept as the model's world resolved it (its retain set and prompts)."""
    concept = concept if concept is not None else resolve_concept(config, model)
    return short_hash({"spec": spec_hash(config), "model": model.fingerprint, "concept": concept.spec()})


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
    problems = run_problems(config, model)  # device, image size, output folder: before any weights
    if problems:
        raise UserError("\n".join(problems))
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

    concept = resolve_concept(resolved, model)  # once, by the model's world; every component reads it
    run_dir = safe_join(config.output_dir, f"{config.name}-{run_hash(resolved, model, concept)}")
    technique = tech_cls(tech_params)
    ctx = RunContext(resolved, model, cache_dir=Path(config.output_dir) / "_techniques", resolved_concept=concept)
    # the edit's entry, keyed by everything the technique declares it reads (techniques/base.py)
    ctx.cache_dir = technique_cache(ctx).path(technique.cache_spec(ctx))
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
    plan = Plan(resolved, model, technique, metrics, dedupe(requests), run_dir, ctx)
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


def generate(plan: Plan, pipe, images: ImageStore, label: str, progress,
             requests: list[GenRequest] | None = None, pad: bool = False) -> int:
    """Every missing image of ``requests`` (default: the plan's), in the engine's fixed partition
    of that list. Non-finite images are stored with a flag (:meth:`ImageStore.put`)."""
    requests = plan.requests if requests is None else requests
    todo = [r for r in requests if not images.has(r.key)]
    task = progress.add_task(f"generate ({label})", total=len(requests),
                             completed=len(requests) - len(todo), info="")
    cfg = plan.config
    with engine_applied(pipe, cfg.engine if todo else None, cfg.device, requests, cfg.sampler.batch_size) as eng:
        written = Generator(pipe, cfg.device).generate(
            requests,
            have=lambda r: images.has(r.key),
            put=lambda r, img: images.put(r.key, img),
            put_nonfinite=lambda r, img, fault: images.put(r.key, img, nonfinite=fault),
            batch_size=eng.batch_size,
            progress=lambda n: progress.advance(task, n),
            pad=pad,
        )
    if todo:
        engine_record(plan.ctx.extras, eng)
    progress.update(task, completed=len(requests))
    return written


def score(plan: Plan, images: ImageStore, judges: Judges) -> dict[str, MetricResult]:
    """Each metric over its finite images only; a metric with none has no value (not 0), and so
    has one that cannot score a subset (``scores_each_image`` False) as soon as one image is
    non-finite."""
    results = {}
    for key, metric in plan.metrics.items():
        metric.reset()
        reqs = plan.ctx.extras["requests_by_metric"][key]
        finite = [r for r in reqs if images.flagged(r.key) is None]
        if finite and (len(finite) == len(reqs) or metric.scores_each_image):
            metric.update(finite, images.get_many([r.key for r in finite]), judges.for_metric(metric))
            result = metric.compute()
            result.nonfinite = len(reqs) - len(finite)
        else:
            result = MetricResult.no_value(metric.higher_is_better, len(reqs) - len(finite))
            if finite:
                result.details["no_value"] = (f"{len(reqs) - len(finite)} of its {len(reqs)} images were non-finite "
                                              "and this metric scores its images only all together")
        result.details.setdefault("seeds", sorted({r.seed for r in reqs}))
        results[key] = result
    return results


def nonfinite_requests(requests: list[GenRequest], images: ImageStore) -> list[dict[str, Any]]:
    """The requests among ``requests`` whose image was flagged non-finite, with the fault."""
    out = []
    for r in requests:
        fault = images.flagged(r.key)
        if fault is not None:
            out.append({"key": r.key, "prompt": r.prompt, "seed": r.seed, **fault})
    return out


def base_dir(plan: Plan) -> Path:
    """The shared folder of a base model's images and metric values.

    Keyed by everything that changes a base image besides its request: the model, dtype, device
    and the batch size (batched kernels may round the last bit differently, which moves a pixel
    by one grey level), so a run's "before" images never depend on which run made them first."""
    c = plan.config
    base = c.base_model or c.model
    info = plan.model if base == c.model else resolve_model(base)
    key = short_hash({"model": base, "fingerprint": info.fingerprint, "dtype": c.dtype, "device": c.device,
                      "batch_size": c.sampler.batch_size, **engine_base_key(c)})
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


def base_images(plan: Plan, pipe, images: ImageStore, progress) -> int:
    """The plan's missing base-model images into ``images`` (the shared folder of :func:`base_dir`),
    in key order, each made once among runs filling the folder at the same time
    (:meth:`ImageStore.fill`). Padded batches: a shared base image depends on its request and the
    batch size only, so any split of the work gives the same images."""
    reqs = sorted(plan.requests, key=lambda r: r.key)
    by_key = {r.key: r for r in reqs}
    return images.fill([r.key for r in reqs], lambda keys: generate(
        plan, pipe, images, "base model", progress, [by_key[k] for k in keys], pad=True))


def before_phase(plan: Plan, pipe, judges: Judges, progress, log,
                 work: dict[str, int] | None = None) -> dict[str, MetricResult]:
    """Base-model images and metric values, each computed once per base model.

    The base images are generated in an order that depends only on the set of requests (sorted
    by key), not on the order of the config's metrics. ``work`` counts what was computed here
    (images written, metric values not taken from the cache)."""
    work = {} if work is None else work
    bind_pipeline(plan, pipe, "before")
    root = base_dir(plan)
    images = ImageStore(root / "images")
    written = base_images(plan, pipe, images, progress)
    work["before"] = work.get("before", 0) + written
    log("base_images", written=written)
    out = {}
    cache = Cache(root / "metrics")
    for key, metric in plan.metrics.items():
        reqs = plan.ctx.extras["requests_by_metric"][key]
        spec = base_metric_spec(plan, metric, judges.for_metric(metric), reqs, root)

        def compute(key=key, metric=metric, reqs=reqs):
            single = Plan(plan.config, plan.model, plan.technique, {key: metric}, reqs, plan.run_dir, plan.ctx)
            work["before"] = work.get("before", 0) + 1
            return score(single, images, judges)[key].to_dict()

        value, _ = cache.get_or_compute(spec, compute)
        out[key] = MetricResult(**value)
    return out


def base_metric_spec(plan: Plan, metric: Metric, metric_judges: dict[str, Judge], requests: list[GenRequest],
                     root: Path) -> dict[str, Any]:
    """The complete key of a base-model metric value: the metric (name, version, params), the
    concept it reads, each judge as resolved (spec incl. rule preset, version, weights
    fingerprint), the base model's weights and image settings (``root``, :func:`base_dir`) and
    the requests scored."""
    c = plan.config
    base = c.base_model or c.model
    info = plan.model if base == c.model else resolve_model(base)
    return {"kind": "base_metric", **component_spec(metric), "concept": plain(plan.ctx.concept),
            "judges": {role: judge_spec(j) for role, j in sorted(metric_judges.items())},
            "model": {"ref": base, "fingerprint": info.fingerprint}, "images": root.name,
            "requests": [r.key for r in requests]}


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


PHASES = ("prepare", "load", "before", "technique", "generate", "score", "probes")
_SETUP = ("prepare", "load")  # redone by every attempt; they count when the attempt computed anything


def compute_timings(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-phase compute cost from a run directory's manifest, which logs one ``phase`` event
    (``name``, ``seconds``, ``work``: how much it computed) per finished phase of each attempt
    (an attempt begins at a ``start`` event).

    A phase's cost is the sum of its seconds over the attempts where it computed something
    (images written, the edit applied, metric values not read from a cache), so resuming a
    finished run keeps the cost of the run that did the work; ``prepare`` and ``load`` count in
    the attempts that computed anything. A phase no attempt computed (everything came from a
    shared cache) costs what its first attempt spent reading it. The time of a phase cut short
    by a kill is not counted. ``this_run`` holds the last attempt's own seconds per phase."""
    attempts: list[dict[str, dict[str, float]]] = []
    for e in events:
        if e.get("event") == "start":
            attempts.append({})
        elif e.get("event") == "phase" and attempts:
            attempts[-1][e["name"]] = {"seconds": float(e["seconds"]), "work": int(e.get("work", 0))}
    out: dict[str, Any] = {}
    for name in PHASES:
        seen = [a for a in attempts if name in a]
        if not seen:
            continue
        if name in _SETUP:
            busy = [a for a in seen if any(v["work"] > 0 for k, v in a.items() if k not in _SETUP)]
        else:
            busy = [a for a in seen if a[name]["work"] > 0]
        out[name] = round(sum(a[name]["seconds"] for a in busy) if busy else seen[0][name]["seconds"], 3)
    out["total"] = round(sum(v for v in out.values()), 3)
    out["attempts"] = len(attempts)
    return out


def run(config: RunConfig, console=None, report=None) -> RunResults:
    """Run ``config`` and write its results.json. ``report(run_dir, results, images, requests)``,
    when given, is called after results.json is saved (the commands pass
    :func:`evallearn.report.html.write_report`; the report sits above the runner)."""
    from rich.console import Console

    from .progress import new_progress, quiet_library_bars

    quiet_library_bars()
    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    work: dict[str, int] = {}
    log = None

    def phase(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        if log is not None:
            log("phase", name=name, seconds=timings[name], work=work.get(name, 0))
        return time.perf_counter()

    t = time.perf_counter()
    plan = prepare(config)
    t = phase("prepare", t)
    note = check_resumable(plan.run_dir / "results.json")
    if note:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    store = RunStore(plan.run_dir)
    with store, new_progress(config.name) as progress:
        store.write_config(yaml.safe_dump(plan.config.model_dump(mode="json"), sort_keys=False))
        store.log("start", spec=plan.spec_hash, requests=len(plan.requests))
        log = store.log
        log("phase", name="prepare", seconds=timings["prepare"], work=1)
        cfg = plan.config
        judges = Judges(cfg.device)

        base_ref = cfg.base_model or cfg.model
        base_info = plan.model if base_ref == cfg.model else resolve_model(base_ref)
        pipe = load_pipeline(base_info, cfg.device, cfg.dtype)
        t = phase("load", t)

        before: dict[str, MetricResult] = {}
        same_model = base_ref == cfg.model and not plan.technique.changes_model
        if cfg.base_metrics and plan.metrics and not same_model:
            before = before_phase(plan, pipe, judges, progress, store.log, work)
            store.log("before_done")
        t = phase("before", t)

        if base_ref != cfg.model:
            pipe = load_pipeline(plan.model, cfg.device, cfg.dtype)
        pipe, cached = plan.technique.load_or_apply(pipe, plan.ctx)
        bind_pipeline(plan, pipe, "after")
        store.log("technique_done", cached=cached)
        work["technique"] = 0 if cached else 1
        t = phase("technique", t)

        written = generate(plan, pipe, store.images, "after", progress)
        store.log("images_done", written=written)
        work["generate"] = written
        t = phase("generate", t)

        after = score(plan, store.images, judges)
        # the same images give the same numbers: scoring is new work only when images are new
        work["score"] = written
        t = phase("score", t)

        probes_out = None
        if cfg.probes:
            from .probes.phase import run_probes

            cached_probes = set((plan.run_dir / "probes" / "results").glob("*/spec.json"))
            probes_out = run_probes(plan, pipe, lambda: load_pipeline(base_info, cfg.device, cfg.dtype),
                                    store.images, ImageStore(base_dir(plan) / "images"), judges, store.log, progress)
            work["probes"] = len(set((plan.run_dir / "probes" / "results").glob("*/spec.json")) - cached_probes)
            t = phase("probes", t)

        metrics_out = {}
        for key, res in after.items():
            entry = {"after": res.to_dict(), "before": before[key].to_dict() if key in before else None}
            if key in before:
                b = before[key].value
                entry["delta"] = None if res.value is None or b is None else res.value - b
            metrics_out[key] = entry
            store.log("metric", id=key, value=res.value)
        nonfinite = {"after": nonfinite_requests(plan.requests, store.images)}
        if before:
            nonfinite["before"] = nonfinite_requests(plan.requests, ImageStore(base_dir(plan) / "images"))
        timings["total"] = round(time.perf_counter() - t_start, 3)
        compute = compute_timings(store.manifest())
        compute["this_run"] = dict(timings)
        if "engine" in plan.ctx.extras:  # engine seconds (compile, auto batch probe), batch sizes, notes
            compute["engine"] = plan.ctx.extras["engine"]
        results = RunResults.model_validate({
            "schema_version": SCHEMA_VERSION,
            "run": {"name": cfg.name, "spec_hash": plan.spec_hash, "dir": str(plan.run_dir),
                    "eval_learn": __version__,
                    "base_images": base_dir(plan).relative_to(cfg.output_dir).joinpath("images").as_posix()},
            "config": plan.config.model_dump(mode="json"),
            "concept": plan.ctx.concept.spec(),
            "model": plan.model.describe(),
            "technique": {"name": plan.technique.name, "params": plan.technique.params.model_dump(mode="json"),
                          "cached": cached, "cache_dir": str(plan.ctx.cache_dir) if plan.technique.edits else None},
            "metrics": metrics_out,
            "probes": probes_out,
            "seeds": {"run_seed": cfg.seed, "rule": "each image's generator is seeded with its request's seed",
                      "n_requests": len(plan.requests)},
            "nonfinite": nonfinite,
            "environment": environment(cfg.device),
            "timings": compute,
            "warnings": list(plan.notes),
        })
        results.save(plan.run_dir / "results.json")
        if report is not None:
            report(plan.run_dir, results, store.images, plan.requests)
        store.log("done")
    return results
