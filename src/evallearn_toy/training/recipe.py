"""The toy world's training recipe: every artefact, in order, deterministically from one seed.

1. render a fixed training set (:mod:`.data`);
2. the classifier judge (:func:`.stages.train_classifier`);
3. the VAE (:func:`.stages.train_vae`), its ``scaling_factor`` set to 1 / std of the latents;
4. the toy CLIP (:mod:`evallearn_toy.tiny_clip`), whose text tower initialises the pipeline's
   text encoder;
5. the text-to-image model (:func:`.stages.train_t2i`), saved with fp16 weight files;
6. the shipped toy CLIP: the one of step 4 trained further (a fresh schedule, its own draws).

:func:`train_all` writes ``pipeline/``, ``clip/`` and ``classifier/`` (what ``eval-learn toy train
--install`` copies into the package) plus ``budgets.json``, ``timings.json`` and ``train.log``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..classifier import ToyClassifier
from ..render import render_dataset
from .architecture import save_fp16
from .budgets import Budgets
from .data import cached_training_set, render_training_set
from .evaluate import classifier_accuracy, vae_psnr
from .stages import encode_latents, train_classifier, train_t2i, train_vae

PIPELINE_DIR, CLIP_DIR, CLASSIFIER_DIR = "pipeline", "clip", "classifier"
CLIP_INIT_DIR = "clip_init"  # the toy CLIP after ``clip_steps``: the text encoder's initialisation
STAGES = ("classifier", "vae", "clip", "t2i")


def log_to(path: Path | None):
    """A logger printing time-stamped lines and appending them to ``path``."""

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if path is not None:
            with open(path, "a") as f:
                f.write(line + "\n")

    return log


def train_all(
    out: str | Path,
    budgets: Budgets | None = None,
    seed: int = 0,
    stages: tuple[str, ...] = STAGES,
    threads: int | None = 2,
    log=None,
) -> Path:
    """Train every artefact into ``out`` (``pipeline/``, ``clip/``, ``classifier/``).

    A stage whose output already exists in ``out`` is loaded instead of retrained unless it is
    named in ``stages``; the t2i stage resumes from ``out/t2i/state.pt`` when present.
    """
    budgets = budgets or Budgets()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or log_to(out / "train.log")
    if threads:
        torch.set_num_threads(threads)
    (out / "budgets.json").write_text(json.dumps({"seed": seed, **asdict(budgets)}, indent=2) + "\n")
    t_all = time.time()
    timings: dict[str, float] = {}

    t = time.time()
    images, labels = cached_training_set(out / "data.npz", budgets.n_train, seed)
    test_images, test_labels = render_dataset(2000, seed + 1)
    timings["render"] = time.time() - t
    log(f"rendered {len(images)} training images ({timings['render']:.0f}s)")

    if "classifier" in stages or not (out / CLASSIFIER_DIR).exists():
        t = time.time()
        tinted = render_training_set(budgets.n_tinted, seed, tinted=True) if budgets.n_tinted else None
        clf = train_classifier(images, labels, budgets.classifier_steps, seed, log=log, tinted=tinted)
        clf.save(out / CLASSIFIER_DIR)
        timings["classifier"] = time.time() - t
        log(f"classifier on fresh renders: {classifier_accuracy(clf, test_images, test_labels)}")
        tinted_test = render_dataset(2000, seed + 2, tinted=True)
        log(f"classifier on fresh renders with tinted backgrounds: {classifier_accuracy(clf, *tinted_test)}")
    clf = ToyClassifier.load(out / CLASSIFIER_DIR)

    from diffusers import AutoencoderKL

    if "vae" in stages or not (out / "vae").exists():
        t = time.time()
        vae = train_vae(images, budgets.vae_steps, seed, log=log)
        lat = encode_latents(vae, images[:4000])
        vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
        vae.save_pretrained(out / "vae")
        timings["vae"] = time.time() - t
        log(f"vae psnr {vae_psnr(vae, test_images[:500]):.2f} dB, scaling_factor {vae.config.scaling_factor:.4f}")
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()

    from transformers import CLIPModel, CLIPProcessor

    from ..tiny_clip import train_toy_clip, zero_shot_accuracy

    if "clip" in stages or not (out / CLIP_INIT_DIR).exists():
        t = time.time()
        model, processor = train_toy_clip(images, labels, budgets.clip_steps, seed=seed, log=log)
        model.save_pretrained(out / CLIP_INIT_DIR)
        processor.save_pretrained(out / CLIP_INIT_DIR)
        timings["clip"] = time.time() - t
        zs = zero_shot_accuracy(model, processor, test_images[:500], test_labels[:500])
        log(f"clip ({budgets.clip_steps} steps) zero-shot on fresh renders: {zs}")
    text_init = CLIPModel.from_pretrained(out / CLIP_INIT_DIR).text_model.state_dict()

    if "t2i" in stages or not (out / PIPELINE_DIR).exists():
        t = time.time()
        latents = encode_latents(vae, images) * vae.config.scaling_factor
        pipe = train_t2i(latents, labels, vae, text_init, budgets, seed, out / "t2i", log=log, evaluate_with=clf)
        save_fp16(pipe, out / PIPELINE_DIR)
        timings["t2i"] = time.time() - t

    if {"clip", "clip_more"} & set(stages) or not (out / CLIP_DIR).exists():
        t = time.time()
        init = (CLIPModel.from_pretrained(out / CLIP_INIT_DIR), CLIPProcessor.from_pretrained(out / CLIP_INIT_DIR))
        model, processor = train_toy_clip(
            images, labels, budgets.clip_more_steps, seed=seed, log=log, init=init, stream=8, lr=1e-3
        )
        model.save_pretrained(out / CLIP_DIR)
        processor.save_pretrained(out / CLIP_DIR)
        timings["clip_more"] = time.time() - t
        zs = zero_shot_accuracy(model, processor, test_images[:500], test_labels[:500])
        log(f"clip (+{budgets.clip_more_steps} steps) zero-shot on fresh renders: {zs}")
    timings["total"] = time.time() - t_all
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    log(f"done: {timings}")
    return out
