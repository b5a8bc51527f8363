"""Store and reload one UCE edit two ways, timed in the same run on this machine's CPU:

* **full**: the whole edited UNet state dict written as safetensors, read back and loaded;
* **changed**: what :mod:`evallearn.cache` stores: digests of the base UNet before the edit,
  digests after it, only the tensors whose bytes changed written, read back and copied onto the
  base UNet (the digest passes are counted in this path).

Run:  .venv/bin/python benchmarks/bench_cache.py [--model tiny|toy|sd15] [--reps 3] [--out bench_cache.json]

``sd15`` is the full Stable Diffusion 1.5 architecture with random weights (860 M UNet
parameters; benchmarks/bench_edits.py builds it). Both paths load back bit-identical UNets; the
script checks it. The ratio full / changed is the number to read; seconds depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def pipeline_and_context(model: str, out: Path):
    from evallearn.config import parse_config
    from evallearn.runner import prepare

    if model == "sd15":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_edits import build_sd15, context

        technique, ctx = context("uce", {})
        return build_sd15(), technique, ctx
    from evallearn.models.loading import load_pipeline, resolve_model

    ref = "tiny-random" if model == "tiny" else "toy"
    concept = {"name": "cross"} if model == "toy" else {"name": "cat", "retain": ["dog", "car"]}
    plan = prepare(parse_config({"model": ref, "concept": concept, "technique": {"name": "uce"},
                                 "output_dir": str(out)}))
    return load_pipeline(resolve_model(ref)), plan.technique, plan.ctx


def timed(fn, reps: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return best, value


def main() -> None:
    from safetensors.torch import load_file, save_file

    from evallearn.cache import apply_tensors, changed_tensors, load_tensors, save_tensors, state_digests

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("tiny", "toy", "sd15"), default="toy")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_cache.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        base, technique, ctx = pipeline_and_context(args.model, work / "runs")
        t0 = time.perf_counter()
        before = state_digests(base.unet)
        digest_s = time.perf_counter() - t0
        edited = technique.apply(copy.deepcopy(base), ctx)
        del before
        full_state = {k: v.detach().contiguous().cpu() for k, v in edited.unet.state_dict().items()}

        def full_save():
            save_file(full_state, str(work / "full.safetensors"))

        def full_load():
            target = SimpleNamespace(unet=copy.deepcopy(base.unet))  # the load target; not timed
            t = time.perf_counter()
            target.unet.load_state_dict(load_file(str(work / "full.safetensors")))
            return time.perf_counter() - t, target

        def changed_save():
            edit = {"unet": changed_tensors(edited.unet, state_digests(base.unet))}
            (work / "changed").mkdir(exist_ok=True)
            save_tensors(edit, work / "changed")
            return edit

        def changed_load():
            target = SimpleNamespace(unet=copy.deepcopy(base.unet))
            t = time.perf_counter()
            apply_tensors(target, load_tensors(work / "changed", ("unet",)))
            return time.perf_counter() - t, target

        full_save_s, _ = timed(full_save, args.reps)
        changed_save_s, edit = timed(changed_save, args.reps)
        ref = edited.unet.state_dict()

        def best_load(load):
            best = float("inf")
            for _ in range(args.reps):
                seconds, target = load()
                best = min(best, seconds)
            got = target.unet.state_dict()
            assert all(torch.equal(got[k], ref[k]) for k in ref), "a reloaded UNet differs from the edit"
            return best

        full_load_s, changed_load_s = best_load(full_load), best_load(changed_load)
        full_bytes = (work / "full.safetensors").stat().st_size
        changed_bytes = (work / "changed" / "unet.safetensors").stat().st_size
        result = {
            "model": args.model, "technique": "uce", "threads": args.threads, "reps": args.reps,
            "unet_tensors": len(ref), "changed_tensors": len(edit["unet"]),
            "full_bytes": full_bytes, "changed_bytes": changed_bytes,
            "seconds": {"full_save": round(full_save_s, 4), "full_load": round(full_load_s, 4),
                        "changed_save_incl_digests": round(changed_save_s, 4),
                        "changed_load": round(changed_load_s, 4), "one_digest_pass": round(digest_s, 4)},
            "ratio_full_over_changed": {
                "save": round(full_save_s / changed_save_s, 2), "load": round(full_load_s / changed_load_s, 2),
                "save_plus_load": round((full_save_s + full_load_s) / (changed_save_s + changed_load_s), 2)},
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu": platform.processor() or platform.machine()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
