"""Time and peak memory of TRCE on the full-size Stable Diffusion 1.5 architecture (UNet 860 M
parameters, CLIP ViT-L/14 text encoder) with random weights, fp32, 512 px, on this machine's CPU.

Run:  .venv/bin/python benchmarks/bench_trce.py [--threads 1] [--out bench_trce.json]

* Stage 1 (the closed-form [EoT] edit) runs with its defaults on the concept "nudity" with two
  synonyms (3 triggers x 15 templates) and the open world's fallback prior (3 retain concepts x
  15 templates, since there is no caption corpus offline); the per-caption cost of the prior is
  measured too, so the authors' 30 000-caption MS-COCO prior can be extrapolated.
* Stage 2 is timed by its units: one UNet forward at batch 1 without gradients (a reference
  prediction) and one forward + backward at batch 1 through the trained parameters (self-attention
  and cross-attention queries) with the AdamW step. One refinement iteration is 3 + 4 = 7 of the
  first (original model: trigger, safe, empty; frozen stage-1 model: 4 regularisation latents)
  and 2 + 4 = 6 of the second; the trajectory data are ``T x 50`` CFG steps (batch 2 forwards).
  Peak RSS is taken with the three UNets stage 2 holds (trained, original, frozen stage 1) and the
  optimizer state in memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from _sd15 import peak_rss_gib

HERE = Path(__file__).resolve().parent


def _bench_edits():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_edits", HERE / "bench_edits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_trce.json")
    ap.add_argument("--skip-stage2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    be = _bench_edits()
    from evallearn.techniques import training as T
    from evallearn.techniques._closed_form import embed
    from evallearn.techniques.trce import trainable

    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                             "torch": torch.__version__}, "measured": {}, "extrapolated": {}}
    pipe = be.build_sd15()
    m = out["measured"]

    tech, ctx = be.context("trce", {"stage2": False})
    t = time.perf_counter()
    tech.apply(pipe, ctx)
    m["stage1_defaults_s"] = round(time.perf_counter() - t, 1)
    m["stage1_prompts"] = {"triggers": len(tech.pairs(ctx)) * 15, "prior": len(tech.preserve_prompts(ctx))}
    print("stage 1", m["stage1_defaults_s"], flush=True)
    captions = [f"a photo of a person number {i}" for i in range(64)]
    t = time.perf_counter()
    embed(pipe, captions)
    per_caption = (time.perf_counter() - t) / len(captions)
    m["text_encoder_per_caption_s"] = round(per_caption, 3)
    out["extrapolated"]["coco_prior_30000_captions_text_encoder_s"] = round(30000 * per_caption, 0)

    if not args.skip_stage2:
        unet = pipe.unet
        original, stage1 = T.frozen_copy(unet), T.frozen_copy(unet)
        params = T.select_params(unet, trainable)
        m["trained_parameters_M"] = round(sum(p.numel() for p in params) / 1e6, 1)
        opt = T.make_optimizer(params, 1e-6, "adamw", weight_decay=0.01)
        x = torch.randn(1, 4, 64, 64)
        cond = torch.randn(1, 77, 768)
        with torch.no_grad():
            t = time.perf_counter()
            original(x, 500, encoder_hidden_states=cond)
            m["unet_forward_b1_no_grad_s"] = round(time.perf_counter() - t, 1)
        print("forward", m["unet_forward_b1_no_grad_s"], flush=True)
        del stage1  # held above for the peak; its forward costs the same as the original's
        t = time.perf_counter()
        loss = unet(x, 500, encoder_hidden_states=cond).sample.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        m["unet_forward_backward_adamw_b1_s"] = round(time.perf_counter() - t, 1)
        print("forward+backward", m["unet_forward_backward_adamw_b1_s"], flush=True)
        f, fb = m["unet_forward_b1_no_grad_s"], m["unet_forward_backward_adamw_b1_s"]
        it = 7 * f + 6 * fb
        e = out["extrapolated"]
        e["refinement_iteration_s"] = round(it, 0)
        e["refinement_defaults_1_trigger_s"] = round(3 * 5 * it, 0)
        e["trajectories_1_trigger_s"] = round((5 * 26 + 20 * 50) * 2 * f, 0)
        e["note"] = ("iteration = 7 no-grad forwards + 6 forward/backward; defaults: 3 epochs x 5 trajectories per "
                     "trigger; data: 5 trigger trajectories x 26 steps + 20 unconditional x 50 steps, each step a "
                     "batch-2 forward (about 2 batch-1 forwards)")
    m["peak_rss_gib"] = round(peak_rss_gib(), 2)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
