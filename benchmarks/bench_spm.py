"""Time and peak memory of SPM (docs/techniques/spm.md) on the full-size Stable Diffusion 1.5
architecture (UNet 860 M parameters, CLIP ViT-L/14 text encoder) with random weights, fp32,
512 px, on this machine's CPU.

Run:  .venv/bin/python benchmarks/bench_spm.py [--threads 1] [--repeats 1] [--out bench_spm.json]

Measured, in one process (so ``peak_rss_gib`` is SPM's: pipeline + membranes + AdamW states +
activations of the step):

* ``adapter_params``: parameters of the rank-1 membranes on every transformer Linear / Conv2d;
* ``unet_fwd_cfg_s``: one UNet forward at batch 2 with the membrane attached (one CFG step of the
  partial trajectory; SPM runs ``k`` of these per iteration, ``k`` uniform on 1…29: 15 on average);
* ``unet_fwd_cfg_plain_s``: the same forward without membranes (the membrane's inference overhead);
* ``step_s``: one training step as ``spm_loss`` computes it (original-model targets at batch 2,
  adapted prediction, 4 anchors adapted + original, backward, AdamW and the lr schedule);
* ``transport_s``: the facilitated-transport weight of one prompt (its tokens and embedding against
  the erased prompt's) — paid once per generation call.
"""

from __future__ import annotations

import argparse
import platform
import random

import torch
from _sd15 import build_sd15, emit, peak_rss_gib, timed


def run(repeats: int, resolution: int = 512) -> dict:
    from diffusers.optimization import get_scheduler

    from evallearn.models.text import token_ids
    from evallearn.techniques import spm as S
    from evallearn.techniques import training as T

    pipe = build_sd15()
    unet = pipe.unet
    pipe.vae.to("meta")  # never used by a training step
    x = torch.randn(1, 4, resolution // 8, resolution // 8)
    cond, null = T.encode(pipe, ["a photo of a cat"]), T.encode(pipe, [""])
    out: dict = {}
    with torch.no_grad():
        out["unet_fwd_cfg_plain_s"] = timed(lambda: unet(torch.cat([x, x]), 500, torch.cat([null, cond])), repeats)
    S.install_adapters(unet, 1, 1.0, seed=0)
    unet.requires_grad_(False)
    params = [q for a in S.adapters(unet) for q in a.parameters()]
    for q in params:
        q.requires_grad_(True)
    out["adapter_params"] = sum(q.numel() for q in params)
    out["adapted_layers"] = len(S.adapters(unet))
    with torch.no_grad():
        out["unet_fwd_cfg_s"] = timed(lambda: unet(torch.cat([x, x]), 500, torch.cat([null, cond])), repeats)
    p = S.SPM.Params()
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    lr_sched = get_scheduler(p.lr_scheduler, opt, num_warmup_steps=p.lr_warmup_steps,
                             num_training_steps=p.iterations, num_cycles=p.lr_num_cycles)
    amp = T.Precisioned("cpu")
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)

    def step():
        loss, _ = S.spm_loss(unet, x, 500, cond, null, p, gen, rng, amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()

    out["step_s"] = timed(step, repeats)
    erased = T.encode(pipe, ["cat"])
    special = S.special_token_ids(pipe.tokenizer)

    def transport():
        with torch.no_grad():
            emb = T.encode(pipe, ["a photo of a dog"])
            S.transport_weights(emb, token_ids(pipe, ["a photo of a dog"]), erased, token_ids(pipe, ["cat"]),
                                special, p.matching_metric)

    out["transport_s"] = timed(transport, repeats)
    out["iteration_s_estimated"] = out["step_s"] + 15 * out["unet_fwd_cfg_s"]
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=512, help="image size (latents are size / 8)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "resolution": args.resolution, "dtype": "float32",
              "results": run(args.repeats, args.resolution)}
    emit(report, args.out)


if __name__ == "__main__":
    main()
