"""Time and peak memory of ItD (Interpret then Deactivate, Tian et al. 2025) on the full-size
Stable Diffusion 1.5 text encoder (CLIP ViT-L/14, 12 layers, width 768) with random weights and a
random SAE of the authors' size (524 288 latents, k = 64) at layer 8, fp32, on this machine's CPU.

Run:  .venv/bin/python benchmarks/bench_itd.py [--threads 2] [--out bench_itd.json]

Measured on a shared box (upper bounds): the encodes as the best of 3 after a warm-up, the SAE
step as (3 steps − 1 step) / 2 so that the set-up cancels:

* ``text_encoder_s``: encoding one prompt (batch 1, 77 tokens), the baseline;
* ``itd_encode_s``: the same with ItD's filter on layer 8 (SAE encode with top-k, deactivation,
  decode, the classifier's error, the replacement): the per-prompt cost at inference and, per
  prompt of the concept or of the retain set, the cost of the interpretation step;
* ``sae_train_step_s`` at ``--train-latents`` latents (default 65 536, an eighth of the
  authors') and ``--train-rows`` rows (default 770 = 10 prompts x 77): Adam needs weights,
  gradients and two moments, 4 x 2 x 524 288 x 768 x 4 B = 12.9 GB at the authors' size before
  activations, more than this shared box can spare; the full-size step is extrapolated linearly
  in latents and rows (marked estimated).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _sd15 import peak_rss_gib


def best(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    from evallearn.models.tokenizer import load_clip_tokenizer
    from evallearn.sae.capture import text_layer
    from evallearn.sae.model import SAEConfig, TopKSAE
    from evallearn.sae.train import train_sae
    from evallearn.techniques.itd import deactivate, prompt_mse, token_lengths

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-latents", type=int, default=65536)
    ap.add_argument("--train-rows", type=int, default=770)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1)).eval()
    tok = load_clip_tokenizer()
    ids = tok(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    out: dict = {"threads": args.threads}
    with torch.no_grad():
        out["text_encoder_s"] = best(lambda: te(ids))
        sae = TopKSAE(SAEConfig(d_in=768, n_latents=524288, k=64)).eval()
        out["sae_gib"] = sum(p.numel() for p in sae.parameters()) * 4 / 2**30
        feats = torch.randperm(524288)[:128]
        layer, _ = text_layer(te, 8)

        def hook(m, i, o, sae=sae):
            h = o[0] if isinstance(o, tuple) else o
            recon = deactivate(sae, h, feats, -8.0)
            hit = prompt_mse(recon, h, token_lengths(ids, 49407)) >= 0.0
            new = torch.where(hit[:, None, None], recon, h)
            return (new, *o[1:]) if isinstance(o, tuple) else new

        handle = layer.register_forward_hook(hook)
        out["itd_encode_s"] = best(lambda: te(ids))
        handle.remove()
    out["itd_over_text_encoder"] = out["itd_encode_s"] / out["text_encoder_s"]
    del sae
    acts = torch.randn(args.train_rows * 4, 768)

    def train(steps):
        t = time.perf_counter()
        train_sae(acts, n_latents=args.train_latents, k=64, steps=steps, batch_size=args.train_rows, lr=1e-4,
                  auxk=256, dead_after=10_000_000)
        return time.perf_counter() - t

    out["sae_train_step_s"] = (train(3) - train(1)) / 2  # per step, set-up cancelled
    out["sae_train_step_at"] = {"latents": args.train_latents, "rows": args.train_rows}
    scale = (524288 / args.train_latents) * (3850 / args.train_rows)
    out["sae_train_step_full_s_estimated"] = out["sae_train_step_s"] * scale
    out["sae_train_default_6000_steps_h_estimated"] = out["sae_train_step_full_s_estimated"] * 6000 / 3600
    out["peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
