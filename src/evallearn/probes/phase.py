"""The probes phase of a run (after the metrics): instantiate each configured probe, run it on
the unlearned pipeline (and the base pipeline, loaded once on first need), cache its result in
the run directory so a rerun resumes, and end with the erasure verdict (:mod:`.verdict`). The
standard prompt baseline is added when the config does not list it, since every verdict is read
against it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import registry
from ..config import safe_join, short_hash
from ..store import ImageStore, atomic_write_json
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
    """Refuse, before any weight loads, probes whose scoring could not say "not the concept"."""
    for i, ref in enumerate(config.probes):
        cls = registry.probes.get(ref.name)
        cls(cls.parse_params(dict(ref.params), f"probes[{i}].params"), ctx).check()


def run_probes(plan, pipe, base_loader: Callable[[], Any], run_images: ImageStore, base_images: ImageStore,
               judges, log: Callable[..., None], progress=None) -> dict[str, Any]:
    cfg = plan.config
    root = Path(plan.run_dir) / "probes"
    env = ProbeEnv(erased=pipe, base_loader=base_loader, images=ImageStore(root / "images"), run_images=run_images,
                   base_images=base_images, cache_dir=Path(cfg.output_dir) / "_probes", judges={},
                   artefacts=root / "artefacts", batch_size=cfg.sampler.batch_size, device=cfg.device, log=log)
    refs = probe_refs(cfg)
    task = progress.add_task("probes", total=len(refs), info="") if progress is not None else None
    out: dict[str, Any] = {}
    baseline_key = BASELINE
    for key, name, raw in refs:
        cls = registry.probes.get(name)
        probe = cls(cls.parse_params(raw, f"probes '{key}'.params"), plan.ctx)
        if name == BASELINE:
            baseline_key = key
        spec = {"name": name, "params": probe.params.model_dump(mode="json"),
                "judges": {r: j.key for r, j in probe.judge_refs().items()}}
        path = safe_join(root, f"{key}-{short_hash(spec)}.json")
        if path.exists():
            out[key] = json.loads(path.read_text())
        else:
            env.judges = judges.for_metric(probe)
            probe.check(env.judges)
            try:
                res = probe.run(env).to_dict()
            finally:
                env.restore_schedulers()
            res["probe"] = name
            atomic_write_json(path, res)
            out[key] = res
        log("probe", id=key, value=out[key]["value"])
        if task is not None:
            progress.advance(task, 1)
    return {"results": out, "verdict": verdict(out, baseline_key)}
