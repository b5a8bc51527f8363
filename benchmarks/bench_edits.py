"""Time each closed-form / weight-space edit (UCE, RECE, MACE, SSD) on the full-size Stable
Diffusion 1.5 architecture (UNet2DConditionModel 860 M params, CLIP ViT-L/14 text encoder,
SD VAE) with random weights, on this machine's CPU.

Run:  .venv/bin/python benchmarks/bench_edits.py [--threads 1] [--out bench_edits.json]

Absolute seconds depend on the machine, so every time is also given as a ratio to a baseline
measured in the same run: one UNet forward at batch 2 (the classifier-free-guidance batch of one
512 px denoising step). UCE and RECE run with their defaults. SSD and MACE spend nearly all their
time in UNet passes (image generation, Fisher backward passes, LoRA steps), so they run with a
reduced budget here and their per-unit costs are measured and extrapolated to the defaults; the
JSON says which numbers are measured and which are extrapolated.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def build_sd15():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from evallearn.models.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def context(name: str, params: dict, steps: int = 50):
    from evallearn import registry
    from evallearn.config import parse_config
    from evallearn.context import RunContext
    from evallearn.models.loading import ModelInfo

    cfg = parse_config({"model": "bench-sd15", "concept": {"name": "nudity", "synonyms": ["naked", "nude"],
                                                           "retain": ["person", "cat", "car"]},
                        "technique": {"name": name, "params": params}, "output_dir": "/tmp/bench_runs",
                        "sampler": {"steps": steps, "guidance_scale": 7.5}})
    info = ModelInfo("bench-sd15", Path("/tmp"), frozenset({"sd1"}), "StableDiffusionPipeline", 512)
    cls = registry.techniques.get(name)
    return cls(cls.parse_params(params, "technique.params")), RunContext(cfg, info, Path("/tmp/bench_runs"))


def timed(fn, reps: int = 1) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", default="bench_edits.json")
    ap.add_argument("--edits", default="uce,rece,ssd,mace", help="comma-separated subset to time")
    ap.add_argument("--no-unet", action="store_true",
                    help="skip the UNet-pass baselines (and so SSD/MACE): closed-form edits only, ratios to "
                         "one text-encoder forward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                             "torch": torch.__version__}, "measured": {}, "extrapolated": {}}
    t0 = time.perf_counter()
    pipe = build_sd15()
    out["measured"]["build_random_sd15_s"] = round(time.perf_counter() - t0, 1)
    unet = pipe.unet
    print("built", out["measured"]["build_random_sd15_s"], "s", flush=True)

    ids = pipe.tokenizer(["a photo of a person"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        te = timed(lambda: pipe.text_encoder(ids), max(args.reps, 3))
    out["measured"]["text_encoder_forward_batch1_s"] = round(te, 4)
    print("text encoder forward b1", te, flush=True)
    edits = set(args.edits.split(","))
    results = {}
    if args.no_unet:
        for name, params in [("uce", {"preset": "nudity"}), ("rece", {"preset": "nudity"})]:
            if name in edits:
                tech, ctx = context(name, params)
                dt = timed(lambda tech=tech, ctx=ctx: tech.apply(pipe, ctx), args.reps)
                results[name] = {"seconds": round(dt, 2), "x_text_encoder_forward": round(dt / te, 1),
                                 "budget": "defaults"}
                print(name, dt, flush=True)
        out["edits"] = results
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(json.dumps(out, indent=2))
        return

    lat = torch.randn(2, 4, 64, 64)
    cond = torch.randn(2, 77, 768)
    with torch.no_grad():
        base = timed(lambda: unet(lat, torch.tensor([500, 500]), encoder_hidden_states=cond), args.reps)
    out["measured"]["unet_forward_batch2_s"] = round(base, 2)
    print("unet forward b2", base, flush=True)

    def fwd_bwd():
        x = torch.randn(1, 4, 64, 64)
        loss = unet(x, torch.tensor([500]), encoder_hidden_states=cond[:1]).sample.pow(2).mean()
        loss.backward()
        unet.zero_grad(set_to_none=True)

    unet.requires_grad_(True)
    fb = timed(fwd_bwd, 1)
    unet.requires_grad_(False)
    out["measured"]["unet_forward_backward_batch1_s"] = round(fb, 2)
    print("unet fwd+bwd b1", fb, flush=True)

    for name, params in [("uce", {"preset": "nudity"}), ("rece", {"preset": "nudity"})]:
        if name not in edits:
            continue
        tech, ctx = context(name, params)
        # edits run in place one after the other: the weights are random, the cost does not depend on them
        dt = timed(lambda tech=tech, ctx=ctx: tech.apply(pipe, ctx), 1)
        results[name] = {"seconds": round(dt, 2), "x_unet_forward": round(dt / base, 3), "budget": "defaults"}
        print(name, dt, flush=True)

    if "ssd" in edits:
        results["ssd"] = bench_ssd(pipe, base)
    if "mace" in edits:
        results["mace"] = bench_mace(pipe, base, fb)
    out["edits"] = results
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def bench_ssd(pipe, base: float) -> dict:
    """2 Fisher samples per set, images from 1 denoising step -> per-unit costs, extrapolated."""
    n_s, steps = 2, 1
    tech, ctx = context("ssd", {"num_samples": n_s}, steps=steps)
    dt = timed(lambda: tech.apply(pipe, ctx), 1)
    n_prompts_f, n_prompts_r = 3, 4  # nudity + 2 synonyms; "" + 3 retain
    gen_step = base  # one CFG step of one image ~ one batch-2 UNet forward
    measured_gen = (n_prompts_f + n_prompts_r) * steps * gen_step
    per_sample = (dt - measured_gen) / (2 * n_s)
    full = (n_prompts_f + n_prompts_r) * 50 * gen_step + 2 * 50 * per_sample
    res = {"seconds_reduced": round(dt, 1),
                      "budget_reduced": f"{n_s} Fisher samples/set, {steps}-step images",
                      "per_fisher_sample_s": round(per_sample, 2), "seconds_defaults_extrapolated": round(full, 0),
                      "x_unet_forward_defaults": round(full / base, 1),
                      "budget": "defaults: 50+50 Fisher samples, 7 prompts x 1 image x 50 steps"}
    print("ssd", res, flush=True)
    return res


def bench_mace(pipe, base: float, fb: float) -> dict:
    """1 image of 1 step and 2 LoRA steps per concept (3 concepts) -> per-unit costs, extrapolated."""
    gen_step = base
    tech, ctx = context("mace", {"num_images": 1, "data_steps": 1, "max_train_steps": 2})
    dt = timed(lambda: tech.apply(pipe, ctx), 1)
    n_c = 3
    lora_step = fb  # a LoRA step is one batch-1 forward + backward (to the LoRA weights)
    closed = dt - n_c * 1 * 1 * gen_step - n_c * 2 * lora_step
    full = n_c * 8 * 30 * gen_step + n_c * 50 * lora_step + max(closed, 0)
    res = {"seconds_reduced": round(dt, 1),
                       "budget_reduced": "1 image x 1 step, 2 LoRA steps per concept",
                       "closed_form_and_overhead_s": round(max(closed, 0), 2),
                       "seconds_defaults_extrapolated": round(full, 0),
                       "x_unet_forward_defaults": round(full / base, 1),
                       "budget": "defaults, 3 concepts: 8 images x 30 steps + 50 LoRA steps each"}
    print("mace", res, flush=True)
    return res


if __name__ == "__main__":
    main()
