"""Evaluation of the toy artefacts: the classifier on fresh renders, the VAE's reconstruction,
and the ground-truth bar of the text-to-image model (how often it draws the prompted shape,
colour and style, as the classifier judges it)."""

from __future__ import annotations

import math

import numpy as np
import torch

from evallearn.models.sampling import seed_generators

from .. import DEFAULT_GUIDANCE
from ..classifier import ToyClassifier
from ..concepts import full_caption
from ..render import COLOURS, HEADS, SHAPES, STYLES


@torch.no_grad()
def classifier_accuracy(model: ToyClassifier, images, labels) -> dict[str, float]:
    """Accuracy of each classifier head on uint8 ``images`` with ``labels``."""
    probs = model.predict(images)
    return {h: float((probs[h].argmax(1).numpy() == labels[:, k]).mean()) for k, h in enumerate(HEADS)}


@torch.no_grad()
def vae_psnr(vae, images) -> float:
    """PSNR (dB) of the VAE's reconstruction (posterior mean) of uint8 ``images``."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


def eval_prompts(n_per_shape: int, first_seed: int = 1000) -> list[tuple[str, str, str, str, int]]:
    """``(prompt, shape, colour, style, seed)`` for the ground-truth bar; seeds ``first_seed..`` are
    paired across shapes."""
    out = []
    for shape in SHAPES:
        for j in range(n_per_shape):
            colour = COLOURS[j % len(COLOURS)]
            style = STYLES[(j // len(COLOURS)) % len(STYLES)]
            out.append((full_caption(shape, colour, style, template=j % 2), shape, colour, style, first_seed + j))
    return out


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = DEFAULT_GUIDANCE,
             batch: int = 32):
    """Images as float ``[N, H, W, 3]`` in [0, 1] (one seeded generator per image); the default
    guidance is the toy model's own (4), as in ``toy evaluate`` and the ground-truth bar."""
    outs = []
    for i in range(0, len(prompts), batch):
        res = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                   generator=seed_generators(seeds[i : i + batch]), output_type="np")  # fmt: skip
        outs.append(res.images)
    return np.concatenate(outs)


@torch.no_grad()
def evaluate_pipeline(
    pipe, classifier: ToyClassifier, n_per_shape: int = 32, steps: int = 20, guidance: float = DEFAULT_GUIDANCE,
    first_seed: int = 1000,
):  # fmt: skip
    """Judge generations of fully specified prompts; returns accuracies and the shape confusion matrix."""
    items = eval_prompts(n_per_shape, first_seed)
    images = generate(pipe, [p for p, *_ in items], [s for *_, s in items], steps, guidance)
    probs = classifier.predict(images)
    pred = {h: probs[h].argmax(1).numpy() for h in HEADS}
    n_s = len(SHAPES)
    confusion = np.zeros((n_s, n_s), dtype=int)
    per_shape = {}
    for si, shape in enumerate(SHAPES):
        rows = [k for k, it in enumerate(items) if it[1] == shape]
        for k in rows:
            confusion[si, pred["shape"][k]] += 1
        per_shape[shape] = {
            "shape": float(np.mean([pred["shape"][k] == si for k in rows])),
            "colour": float(np.mean([pred["colour"][k] == COLOURS.index(items[k][2]) for k in rows])),
            "style": float(np.mean([pred["style"][k] == STYLES.index(items[k][3]) for k in rows])),
        }
    mean = {a: float(np.mean([v[a] for v in per_shape.values()])) for a in ("shape", "colour", "style")}
    return {
        "n_per_shape": n_per_shape,
        "first_seed": first_seed,
        "steps": steps,
        "guidance": guidance,
        "per_shape": per_shape,
        "mean": mean,
        "confusion": confusion.tolist(),
        "images": images,
    }


def summary_line(res: dict) -> str:
    """One log line of an :func:`evaluate_pipeline` result."""
    m = res["mean"]
    per = " ".join(f"{s}={v['shape']:.2f}" for s, v in res["per_shape"].items())
    return f"shape {m['shape']:.3f} colour {m['colour']:.3f} style {m['style']:.3f} | {per}"
