"""The probes phase of a run (after the metrics): instantiate each configured probe, run it on
the unlearned pipeline (and the base pipeline, loaded once on first need), cache its result in
the run directory (:class:`evallearn.cache.Cache` under ``probes/results``) so a rerun resumes,
and end with the erasure verdict (:mod:`.verdict`). The standard prompt baseline is added when
the config does not list it, since every verdict is read against it.

A probe returns (and the cache keeps) its flat result, the base model's result under
``details.base``; the phase writes each as a metric's entry (``after``, ``before``, ``delta``:
:func:`evallearn.results.probe_entry`), and the verdict reads the flat results.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import registry
from ..cache import Cache, component_spec, judge_spec
from ..results import probe_entry
from ..store import ImageStore
from . import _sampling
from .base import ProbeEnv
from .verdict import verdict

BASELINE = "standard_prompt"


def probe_refs(config) -> list[tuple[str, str, dict]]:
    """(key, name, params) for each configured probe, the baseline first."""
    refs = [(r.key, r.name, dict(r.params)) for r in config.probes]
    if not any(name == BASELINE for _, name, _ in refs):
        refs.insert(0, (BASELINE, BASELINE, {}))
    return refs


def check_probes(config, ctx) -> None:
    """Refuse, before any weight loads, probes whose scoring could not say "not the concept", and
    check their judges as ``prepare()`` checks the metrics' (params, supported concept kind and
    model, and the ``classify`` capability a forced choice needs)."""
    from ..errors import UserError

    for i, ref in enumerate(config.probes):
        cls = registry.probes.get(ref.name)
        probe = cls(cls.parse_params(dict(ref.params), f"probes[{i}].params"), ctx)
        probe.check()
        for role, jref in probe.judge_refs().items():
            jcls = registry.judges.get(jref.name)
            jcls.parse_params(jref.params, f"probes '{ref.key}' judge '{role}'")
            why = jcls.supports.why_not(ctx.concept.kind, ctx.model.tags)
            if why:
                raise UserError(f"incompatible run: probe '{ref.key}' uses judge '{jref.name}': {why}")
            if role == "classifier" and probe.scoring_rule() == "choice" and "classify" not in jcls.capabilities():
                raise UserError(f"incompatible run: probe '{ref.key}' scores by forced choice, which needs its "
                                f"classifier judge to classify; judge '{jref.name}' cannot")


def probe_spec(probe, judges) -> dict[str, Any]:
    """The complete key of a probe's result in the run directory's cache: the probe (name,
    ``version``, params), what it reads of the run (:meth:`~.base.Probe.inputs`) and each judge
    as resolved (spec, version, weights fingerprint). The run directory keys the pipelines (model,
    base model, technique)."""
    return {"kind": "probe", **component_spec(probe), "inputs": probe.inputs(),
            "judges": {r: judge_spec(j) for r, j in sorted(judges.items())}}


def run_probes(plan, pipe, base_loader: Callable[[], Any], run_images: ImageStore, base_images: ImageStore,
               judges, log: Callable[..., None], progress=None) -> dict[str, Any]:
    """Every configured probe on ``plan``'s run: ``pipe`` is the unlearned pipeline,
    ``base_loader()`` the base one (the runner's, loaded once), ``run_images`` and
    ``base_images`` the run's image stores (the metrics' "after" and "before" folders), and
    ``judges`` the run's judges holder (``Judges.for_metric``, shared with the metrics). Returns
    the ``probes`` section: ``results`` (key -> ``{after, before, delta}``) and ``verdict``."""
    root = Path(plan.run_dir) / "probes"
    base_loader = functools.cache(base_loader)  # loaded on first need, once for all probes
    refs = probe_refs(plan.config)
    task = progress.add_task("probes", total=len(refs), info="") if progress is not None else None
    out: dict[str, Any] = {}
    baseline_key = BASELINE
    for key, name, raw in refs:
        cls = registry.probes.get(name)
        probe = cls(cls.parse_params(raw, f"probes '{key}'.params"), plan.ctx)
        if name == BASELINE:
            baseline_key = key
        env = ProbeEnv.from_plan(plan, pipe, base_loader, run_images, base_images, judges.for_metric(probe), log)
        spec = probe_spec(probe, env.judges)

        def compute(probe=probe, name=name, env=env):
            probe.check(env.judges)
            with _sampling.own_scheduler(env.erased):
                res = probe.run(env).to_dict()
            res["probe"] = name
            return res

        out[key], _ = Cache(root / "results").get_or_compute(spec, compute)
        log("probe", id=key, value=out[key]["value"])
        if task is not None:
            progress.advance(task, 1)
    return {"results": {key: probe_entry(res) for key, res in out.items()}, "verdict": verdict(out, baseline_key)}
