"""Time and peak memory of ANT (docs/techniques/ant.md) on the full-size Stable Diffusion 1.5
architecture (UNet 860 M parameters, CLIP ViT-L/14 text encoder) with random weights, fp32,
512 px, on this machine's CPU.

Run:  .venv/bin/python benchmarks/bench_ant.py [--threads 1] [--method xattn] [--out bench_ant.json]

Measured in one process (student + frozen teacher + Adam on the trained set):

* ``unet_fwd_cfg_s``: one UNet forward at batch 2 (one CFG step of a partial trajectory). An ANT
  iteration runs ``k⁺ + k⁻`` of these, on average 3 + 28 = 31 with the defaults (50 steps,
  ``before_step`` 7);
* ``step_s``: the loss's teacher forwards (batch 4, no gradients), the student forward at batch 4
  (early/late × conditional/unconditional), backward, the saliency mask on the gradients and Adam;
* ``trained_params``: parameters of ``--method``.

The authors train the whole UNet (``full``): weights, gradients, two Adam moments and the frozen
teacher are about 17 GB in fp32 before activations, more than this shared box can spare, so the
default case here is ``xattn`` (the same forward/backward, a smaller optimiser); ``--method full``
runs the real set where memory allows. The saliency phase costs ``saliency_iterations`` × seeds ×
prompts iterations of the same size plus one UNet copy per run.
"""

from __future__ import annotations

import argparse
import platform
import random

import torch
from _sd15 import build_sd15, emit, peak_rss_gib, timed


def run(method: str, repeats: int, resolution: int = 512) -> dict:
    from evallearn.techniques import training as T
    from evallearn.techniques.ant import ANT, ant_terms, combine

    pipe = build_sd15()
    unet = pipe.unet
    pipe.vae.to("meta")
    pipe.text_encoder.requires_grad_(False)
    xp, xm = (torch.randn(1, 4, resolution // 8, resolution // 8) for _ in range(2))
    cond, null = T.encode(pipe, ["a photo of a cat"]), T.encode(pipe, [""])
    out: dict = {"method": method}
    with torch.no_grad():
        out["unet_fwd_cfg_s"] = timed(lambda: unet(torch.cat([xp, xp]), 500, torch.cat([null, cond])), repeats)
    teacher = T.frozen_copy(unet)
    params = T.select_params(unet, T.unet_param_filter(method))
    names = [n for n, q in unet.named_parameters() if q.requires_grad]
    mask = {n: (torch.rand(q.shape, generator=torch.Generator().manual_seed(i)) < 0.25).float()
            for i, (n, q) in enumerate(zip(names, params, strict=True))}
    out["trained_params"] = sum(q.numel() for q in params)
    opt = torch.optim.Adam(params, lr=5e-4)
    p = ANT.Params()
    rng = random.Random(0)

    def step():
        tp, tm = 981 - 20 * rng.randrange(7), 981 - 20 * rng.randrange(7, 50)
        loss = combine(*ant_terms(unet, teacher, xp, tp, xm, tm, cond, null, p.negative_guidance), p.alpha_1,
                       p.alpha_2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for n, q in zip(names, params, strict=True):
            q.grad.mul_(mask[n])
        opt.step()

    out["step_s"] = timed(step, repeats)
    out["iteration_s_estimated"] = out["step_s"] + 31 * out["unet_fwd_cfg_s"]
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--method", default="xattn", choices=["xattn", "noxattn", "full", "selfattn", "notime"])
    ap.add_argument("--resolution", type=int, default=512, help="image size (latents are size / 8)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "resolution": args.resolution, "dtype": "float32",
              "results": run(args.method, args.repeats, args.resolution)}
    emit(report, args.out)


if __name__ == "__main__":
    main()
