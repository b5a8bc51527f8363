"""Peak memory and time per training step of the fine-tuning techniques (ESD, gradient ascent,
task vectors, STEREO, AdvUnlearn, Concept Ablation, CoGFD) on the full-size Stable Diffusion 1.5
architecture (UNet 860 M parameters, CLIP ViT-L/14 text encoder) with random weights, fp32, 512 px,
on this machine's CPU.

Run:  .venv/bin/python benchmarks/bench_finetune.py [--threads 1] [--cases esd_x,ga] [--out bench_finetune.json]

Each case runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own. A case
builds what the technique holds in memory (trained model, frozen teacher where the technique
keeps one, optimizer state) and times what one training iteration does, split into its parts:

* ``unet_fwd_cfg``: one UNet forward at batch 2 (one classifier-free-guided DDIM step). ESD,
  STEREO and AdvUnlearn run ``k`` of these per iteration for the partial trajectory, ``k``
  uniform on the DDIM steps (25 on average with 50 steps), so their iteration time is
  ``step + 25 x unet_fwd_cfg`` (plus, for AdvUnlearn, ``attack_step`` attack steps each with
  its own trajectory).
* ``step``: the loss's forward passes, the backward pass and the optimizer update, measured
  (mean of ``--repeats`` after one warm-up).

Batches larger than one (GA 5, CA 8, CoGFD 20) are measured at batch 1 here and scaled
linearly for time (``step_at_paper_batch`` is then marked estimated); activations grow with the
batch, so their peak memory at paper batch is higher than measured. ESD-u, ESD (full), GA and
TV train the whole UNet: Adam(W) states for 860 M parameters plus a frozen teacher need about
17 GB before activations, more than this shared 24 GiB box can spare, so they only run with
``--big``; otherwise their memory is estimated from the parameter count and the measured ESD-x
activations (marked).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch
from _sd15 import build_sd15, emit, peak_rss_gib, timed

CASES = ("esd_x", "esd_u", "esd_full", "ga", "concept_ablation", "cogfd", "advunlearn_te", "stereo_ti")
BIG = {"esd_u", "esd_full", "ga"}




def run_case(name: str, repeats: int) -> dict:
    from evallearn.techniques import _training as T
    from evallearn.techniques.advunlearn import adversarial_embeds, text_encoder_filter
    from evallearn.techniques.stereo import Token

    pipe = build_sd15()
    unet, te = pipe.unet, pipe.text_encoder
    pipe.vae.to("meta")  # never used by a training step here
    mse = torch.nn.functional.mse_loss
    x = torch.randn(1, 4, 64, 64)
    t = torch.tensor([500])
    cond, null = T.encode(pipe, ["a photo of a cat"]), T.encode(pipe, [""])
    out: dict = {"case": name}
    batch = 1

    with torch.no_grad():
        out["unet_fwd_cfg_s"] = timed(lambda: unet(torch.cat([x, x]), 500, torch.cat([null, cond])), 1)

    if name.startswith("esd"):
        method = {"esd_x": "xattn", "esd_u": "noxattn", "esd_full": "full"}[name]
        teacher = T.frozen_copy(unet)
        params = T.select_params(unet, T.unet_param_filter(method))
        opt = torch.optim.Adam(params, lr=1e-5)

        def step():
            with torch.no_grad():
                e = teacher(torch.cat([x, x]), t, torch.cat([null, cond])).sample
                e0, ec = e.chunk(2)
            loss = mse(unet(x, t, cond).sample, e0 - (ec - e0))
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["trained_params"] = sum(p.numel() for p in params)
        out["note"] = "iteration = step + k x unet_fwd_cfg, k ~ U{0..49}"
    elif name == "ga":
        params = T.select_params(unet, T.unet_param_filter("full"))
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2)
        noise = torch.randn_like(x)

        def step():
            loss = -mse(unet(x, t, cond).sample, noise)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        batch, out["trained_params"] = 5, sum(p.numel() for p in params)
        out["note"] = "one micro-batch of 1 (paper: 5 x 4 accumulation); task_vector has the same step"
    elif name == "concept_ablation":
        params = T.select_params(unet, lambda n: "attn2.to_k" in n or "attn2.to_v" in n)
        opt = torch.optim.AdamW(params, lr=1.6e-5)
        anchor = T.encode(pipe, ["a photo of a animal"])

        def step():
            with torch.no_grad():
                goal = unet(x, t, anchor).sample
            loss = mse(unet(x, t, cond).sample, goal)
            opt.zero_grad()
            loss.backward()
            opt.step()
        batch, out["trained_params"] = 8, sum(p.numel() for p in params)
    elif name == "cogfd":
        teacher = T.frozen_copy(unet)
        params = T.select_params(unet, lambda n: "attn2" in n and "to_v" not in n)
        opt = torch.optim.AdamW(params, lr=2.5e-5)

        def step():
            with torch.no_grad():
                ref = teacher(x, t, cond).sample
            loss = 0.1 * torch.exp(-mse(unet(x, t, cond).sample, ref))
            opt.zero_grad()
            loss.backward()
            opt.step()
        batch, out["trained_params"] = 20, sum(p.numel() for p in params)
    elif name == "advunlearn_te":
        unet.requires_grad_(False)
        te_orig = T.frozen_copy(te)
        params = T.select_params(te, text_encoder_filter("all"))
        opt = torch.optim.Adam(params, lr=1e-5)
        vocab = T.word_embeddings(te_orig).weight.detach()
        adv = vocab[:1][None].clone().requires_grad_(True)
        retain = T.encode(pipe, ["a photo of a dog"] * 5, te_orig)
        xr = torch.randn(5, 4, 64, 64)

        def attack_step():
            ids, emb = adversarial_embeds(pipe, vocab, "cat", adv)
            loss = mse(unet(x, t, T.encode_embeds(te, ids, emb)).sample, torch.zeros_like(x))
            loss.backward()

        def step():
            ids, emb = adversarial_embeds(pipe, vocab, "cat", adv.detach())
            with torch.no_grad():
                e = unet(torch.cat([x, x]), t, torch.cat([null, cond])).sample
                r = unet(xr, t, retain).sample
            loss = mse(unet(x, t, T.encode_embeds(te, ids, emb)).sample, e[:1])
            loss = loss + 0.3 * mse(unet(xr, t, T.encode(pipe, ["a photo of a dog"] * 5, te, grad=True)).sample, r)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["attack_step_s"] = timed(attack_step, repeats)
        out["trained_params"] = sum(p.numel() for p in params)
        out["note"] = ("outer step includes the retain batch of 5; iteration = step + (k+1) x unet_fwd_cfg "
                       "+ attack_step x (attack_step_s + k x unet_fwd_cfg) after warm-up")
    elif name == "stereo_ti":
        unet.requires_grad_(False)
        te.requires_grad_(False)
        tok = Token(pipe, "object")
        tok.vector.requires_grad_(True)
        opt = torch.optim.AdamW([tok.vector], lr=5e-3)
        noise = torch.randn_like(x)

        def step():
            loss = mse(unet(x, t, tok.encode(pipe, ["a photo of a {}"], grad=True)).sample, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["note"] = "one textual-inversion step; STEREO's erasure steps cost as esd_u"
    else:
        raise SystemExit(f"unknown case {name}")

    out["step_s"] = timed(step, repeats)
    out["batch_measured"] = 1
    if batch > 1:
        out["paper_batch"] = batch
        out["step_at_paper_batch_s_estimated"] = out["step_s"] * batch
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cases", default=",".join(c for c in CASES if c not in BIG))
    ap.add_argument("--big", action="store_true", help="also run the full-UNet cases (about 20 GB RSS)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_case(args.child, args.repeats)))
        return
    cases = [c for c in args.cases.split(",") if c]
    if args.big:
        cases += [c for c in BIG if c not in cases]
    results = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--child", case, "--threads", str(args.threads),
                               "--repeats", str(args.repeats)], capture_output=True, text=True)
        if proc.returncode:
            results.append({"case": case, "error": proc.stderr.strip().splitlines()[-1:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    unet_params = 859_520_964
    for case in BIG - set(cases):
        # weights + grads + 2 Adam moments (+ a frozen teacher for ESD) in fp32, plus ESD-x's activations
        copies = 5 if case.startswith("esd") else 4
        act = next((r["peak_rss_gib"] for r in results if r.get("case") == "esd_x"), None)
        base = 4 * unet_params * copies / 2**30
        results.append({"case": case, "peak_rss_gib_estimated": round(base + (act - 2 * 3.2 if act else 0), 1),
                        "note": "not run (needs --big); estimate = fp32 copies of the UNet + measured activations"})
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "resolution": 512, "dtype": "float32", "results": results}
    emit(report, args.out)


if __name__ == "__main__":
    main()
