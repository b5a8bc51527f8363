"""Per-step cost of AdaVD on the full-size Stable Diffusion 1.5 architecture (UNet 860 M parameters,
CLIP ViT-L/14 text encoder) with random weights, fp32, on this machine's CPU.

Run:  .venv/bin/python benchmarks/bench_adavd.py [--threads 1] [--size 256] [--out bench_adavd.json]

One classifier-free-guidance step (batch 1: the UNet at batch 2) with AdaVD's processors installed
is timed against the same step of the plain UNet, in the same run, best of ``--reps``; the one-off
per-call setup (encoding the target and the empty text) is timed too. Peak RSS covers it all.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import torch
from _sd15 import peak_rss_gib

HERE = Path(__file__).resolve().parent


def _bench_edits():
    spec = importlib.util.spec_from_file_location("bench_edits", HERE / "bench_edits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def best_of(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="bench_adavd.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    be = _bench_edits()
    from evallearn.techniques._guided import Guidance

    pipe = be.build_sd15()
    tech, ctx = be.context("adavd", {})
    tp = tech.apply(pipe, ctx)
    cond, uncond = tp.encode_prompt(["a photo of a person"], "cpu", 1, True, [""])
    setup = best_of(lambda: tp.setup_guidance(["p"], [""], cond, uncond, 7.5), args.reps)
    state = tp.setup_guidance(["p"], [""], cond, uncond, 7.5)
    tp.scheduler.set_timesteps(50)
    t = tp.scheduler.timesteps[0]
    lat = torch.randn(1, 4, args.size // 8, args.size // 8)
    plain = best_of(lambda: Guidance.guided_noise(tp, 0, t, lat, cond, uncond, 7.5, state), args.reps)
    adavd = best_of(lambda: tp.guided_noise(0, t, lat, cond, uncond, 7.5, state), args.reps)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                       "torch": torch.__version__},
           "size_px": args.size, "setup_s": round(setup, 3), "step_plain_s": round(plain, 3),
           "step_adavd_s": round(adavd, 3), "step_ratio": round(adavd / plain, 3),
           "peak_rss_gib": round(peak_rss_gib(), 2)}
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
