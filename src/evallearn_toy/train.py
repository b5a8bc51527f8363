"""The toy trainer's former single module, kept importable: every name now lives in
:mod:`evallearn_toy.training` (architecture, data, stages, evaluation, recipe)."""

from __future__ import annotations

from .training.architecture import (
    build_text_encoder,
    build_unet,
    build_vae,
    make_pipeline,
    noise_scheduler,
    sampling_scheduler,
)
from .training.budgets import Budgets
from .training.checkpoints import load_training_state
from .training.data import render_training_set
from .training.ema import EMA
from .training.evaluate import classifier_accuracy, eval_prompts, evaluate_pipeline, generate, summary_line, vae_psnr
from .training.recipe import CLASSIFIER_DIR, CLIP_DIR, CLIP_INIT_DIR, PIPELINE_DIR, train_all
from .training.stages import encode_latents, train_classifier, train_t2i, train_vae
from .training.stages import lr_factor as _lr_factor

__all__ = [
    "CLASSIFIER_DIR", "CLIP_DIR", "CLIP_INIT_DIR", "EMA", "PIPELINE_DIR", "Budgets", "_lr_factor", "build_text_encoder",
    "build_unet", "build_vae", "classifier_accuracy", "encode_latents", "eval_prompts", "evaluate_pipeline",
    "generate", "load_training_state", "make_pipeline", "noise_scheduler", "render_training_set",
    "sampling_scheduler", "summary_line", "train_all", "train_classifier", "train_t2i", "train_vae", "vae_psnr",
]
