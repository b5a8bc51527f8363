"""Typed results written directly (no model run) for the leaderboard and hub tests: a suite
folder of four runs on two concepts with hand-picked values, a stray results.json under _base
(which must be skipped) and a suite.json with one failed cell."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evallearn.results import SCHEMA_VERSION, RunResults


def metric(value, lo, hi, n, before=None, higher=True, judge="toy_classifier", samples=None):
    after = {"value": value, "ci_low": lo, "ci_high": hi, "n": n, "higher_is_better": higher,
             "judges": {"classifier": {"judge": judge}}}
    if samples is not None:
        after["samples"] = samples
    out = {"after": after}
    if before is not None:
        bv, blo, bhi = before
        out["before"] = {"value": bv, "ci_low": blo, "ci_high": bhi, "n": n, "higher_is_better": higher}
        out["delta"] = value - bv
    return out


def probes(std, noise, label, recovered_by=()):
    def result(name, v):
        return {"value": v, "ci_low": max(v - 0.25, 0.0), "ci_high": min(v + 0.25, 1.0), "n": 8,
                "higher_is_better": False, "kind": "recovery", "chance": 0.25, "probe": name,
                "scoring": {"rule": "choice", "chance": 0.25}, "details": {}}

    def one(name, v):
        return {"after": result(name, v), "before": result(name, 0.875), "delta": v - 0.875}

    return {"results": {"standard_prompt": one("standard_prompt", std), "noise_based": one("noise_based", noise)},
            "verdict": {"label": label, "summary": "s", "probes": {
                "noise_based": {"tested": "eta=1", "vs_standard": noise - std, "ci_low": noise - std - 0.25,
                                "ci_high": noise - std + 0.25, "p_holm": 0.03,
                                "recovers": "noise_based" in recovered_by}},
                "recovered_by": list(recovered_by)}}


def results(name, technique, params, concept, ua, ira, probe=None, model="toy", seed=0, versions=None) -> RunResults:
    retain = [c for c in ("circle", "square", "triangle", "cross") if c != concept]
    return RunResults.model_validate({
        "schema_version": SCHEMA_VERSION,
        "run": {"name": name, "spec_hash": hashlib.sha256(f"{name}/{concept}/{seed}".encode()).hexdigest()[:12],
                "eval_learn": "0.1.0"},
        "config": {"name": name, "model": model, "technique": {"name": technique, "params": params},
                   "concept": {"name": concept, "kind": "object", "retain": retain},
                   "metrics": ["ua", "ira"], "seed": seed, "base_model": None},
        "concept": {"name": concept, "kind": "object", "retain": retain, "world": "toy"},
        "model": {"ref": model, "fingerprint": "abc"},
        "technique": {"name": technique, "params": params},
        "metrics": {"ua": ua, "ira": ira},
        "probes": probe,
        "seeds": {"run_seed": seed},
        "environment": {"versions": versions or {"eval-learn": "0.1.0", "torch": "2.13.0", "diffusers": "0.35.0"}},
    })


#: (run name, technique, params, concept, UA (value, lo, hi), IRA (value, lo, hi), probes)
BOARD = [
    ("uce-shape", "uce", {"guide": "shape", "lamb": 0.5}, "cross", (0.75, 0.5, 1.0), (0.875, 0.75, 1.0), None),
    ("uce-weak", "uce", {"guide": "shape", "lamb": 0.05}, "cross", (0.5, 0.25, 0.75), (0.9375, 0.875, 1.0), None),
    ("sld-max", "sld", {"preset": "max", "concept_from_run": True}, "cross", (0.25, 0.0, 0.5), (0.8125, 0.6875, 0.9375),
     None),
    ("uce-circle", "uce", {"guide": "shape"}, "circle", (0.625, 0.375, 0.875), (0.9, 0.8, 1.0),
     probes(0.125, 0.5, "guidance-based avoidance", ["noise_based"])),
]
BASE = {"cross": ((0.0, 0.0, 0.0), (0.875, 0.75, 1.0)), "circle": ((0.125, 0.0, 0.375), (0.9, 0.8, 1.0))}


def write_board(root: Path, failed: bool = True) -> Path:
    """The BOARD runs as a suite folder ``root`` (run dirs ``<name>-<hash>``)."""
    cells = []
    for name, tech, params, concept, ua, ira, probe in BOARD:
        bua, bira = BASE[concept]
        res = results(name, tech, params, concept, metric(*ua, 8, before=bua), metric(*ira, 24, before=bira), probe)
        run_dir = root / f"{name}-{res.run.spec_hash}"
        res.run.dir = str(run_dir)
        res.save(run_dir / "results.json")
        cells.append({"id": name, "spec_hash": res.run.spec_hash, "run_dir": str(run_dir), "status": "done"})
    # a results.json inside _base is not a run of the board
    stray = results("stray", "uce", {}, "cross", metric(0.0, 0.0, 0.0, 1), metric(0.0, 0.0, 0.0, 1))
    stray.save(root / "_base" / "abc" / "results.json")
    if failed:
        cells.append({"id": "esd-cross", "spec_hash": "0" * 12, "run_dir": None, "status": "failed",
                      "error": "RuntimeError: boom"})
    (root / "suite.json").write_text(json.dumps({"name": "toy-board", "spec_hash": "f" * 12, "cells": cells}))
    return root
