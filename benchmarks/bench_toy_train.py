"""Toy text-to-image training step: multi-tensor (foreach) optimiser tail vs the per-parameter loop.

``eval-learn toy train`` spends most of its time in the UNet stage. On CPU, torch's AdamW,
``clip_grad_norm_`` and a hand-written EMA default to a Python loop over the ~400 parameter
tensors of the toy UNet and text encoder; the foreach kernels do the same arithmetic in a few
calls. Both arms run in the same process on the same modules and batch, interleaved, so the
ratio is meaningful on a noisy machine; absolute times are not. With ``--attention`` it also
compares diffusers' attention processors for the UNet's forward + backward: ``AttnProcessor2_0``
(``scaled_dot_product_attention``, the default) against ``AttnProcessor`` (batched matmuls and a
softmax). Usage:

    python benchmarks/bench_toy_train.py [--steps 20] [--threads 2] [--batch 16]

Prints milliseconds per step (whole step and optimiser tail alone) for each arm and the ratio.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--attention", action="store_true", help="also compare the UNet's attention processors")
    args = ap.parse_args()

    import torch

    from evallearn_toy.training.architecture import build_text_encoder, build_unet
    from evallearn_toy.training.ema import EMA

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = build_unet().to(memory_format=torch.channels_last).train()
    text = build_text_encoder().train()
    params = list(unet.parameters()) + list(text.parameters())
    print(f"{len(params)} parameter tensors, {sum(p.numel() for p in params) / 1e6:.2f} M values")
    arms = {}
    for foreach in (False, True):
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, foreach=foreach)
        arms[foreach] = (opt, EMA([unet, text]))
    bs = args.batch
    x = torch.randn(bs, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    ids = torch.randint(0, 49408, (bs, 77))
    t = torch.randint(0, 1000, (bs,))

    def step(foreach: bool, k: int) -> tuple[float, float]:
        opt, ema = arms[foreach]
        t0 = time.perf_counter()
        loss = (unet(x, t, encoder_hidden_states=text(ids).last_hidden_state).sample - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=foreach)
        opt.step()
        ema.update([unet, text], k, foreach=foreach)
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1

    for f in (False, True):  # warm-up (optimiser state allocation)
        step(f, 0)
    times = {False: [], True: []}
    for k in range(args.steps):
        for f in (False, True):
            times[f].append(step(f, k + 1))
    med = {}
    for f, v in times.items():
        whole = sorted(a for a, _ in v)[len(v) // 2]
        tail = sorted(b for _, b in v)[len(v) // 2]
        med[f] = (whole, tail)
        print(f"{'foreach' if f else 'per-parameter loop':>18}: step {whole * 1e3:7.1f} ms, "
              f"clip + AdamW + EMA {tail * 1e3:6.1f} ms (median of {args.steps})")  # fmt: skip
    print(
        f"optimiser tail speed-up x{med[False][1] / med[True][1]:.2f}; whole step x{med[False][0] / med[True][0]:.2f}"
    )
    if args.attention:
        compare_attention(unet, text, x, ids, t, args.steps)


def compare_attention(unet, text, x, ids, t, steps: int) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    def fwd_bwd() -> float:
        t0 = time.perf_counter()
        (unet(x, t, encoder_hidden_states=text(ids).last_hidden_state).sample - x).pow(2).mean().backward()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"sdpa": [], "matmul": []}
    procs = {"sdpa": AttnProcessor2_0(), "matmul": AttnProcessor()}
    for name in times:  # warm-up
        unet.set_attn_processor(procs[name])
        fwd_bwd()
    for _ in range(steps):
        for name, proc in procs.items():
            unet.set_attn_processor(proc)
            times[name].append(fwd_bwd())
    unet.set_attn_processor(AttnProcessor2_0())
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>18}: UNet + text encoder forward + backward {v * 1e3:7.1f} ms (median of {steps})")
    print(f"matmul attention speed-up x{med['sdpa'] / med['matmul']:.2f}")


if __name__ == "__main__":
    main()
