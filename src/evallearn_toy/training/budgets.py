"""The toy trainer's budgets: steps, data sizes and the t2i stage's settings."""

from __future__ import annotations

from dataclasses import dataclass

from .architecture import UNET_CHANNELS


@dataclass
class Budgets:
    """Training budgets (steps) and data sizes; the defaults made the shipped weights."""

    n_train: int = 40_000
    #: renders of the same scenes with tinted backgrounds (``render_dataset(..., tinted=True)``)
    #: added to the classifier's training set, so the judge reads the shape, not the background
    n_tinted: int = 20_000
    classifier_steps: int = 500
    vae_steps: int = 600
    clip_steps: int = 500
    clip_more_steps: int = 600
    unet_steps: int = 7000
    unet_batch: int = 16
    unet_lr: float = 5e-4
    text_lr: float = 5e-4
    #: the token embedding trains too: the toy CLIP's early run left the shape words' embeddings
    #: near their initialisation, and frozen they kept "circle", "square" and "cross" apart too
    #: little for the UNet to draw them differently (shape accuracy 0.34 at 3000 steps)
    freeze_token_embedding: bool = False
    #: the loss weights noise predictions by clamp(SNR, snr_floor, snr_gamma) / SNR, i.e. the
    #: x0-reconstruction loss weighted by clamp(SNR, floor, gamma): Min-SNR-gamma (Hang et al., 2023)
    #: caps the easy low-noise steps; a floor of 1 ("truncated SNR") keeps the high-noise steps,
    #: where the layout and so the shape is decided, from vanishing under epsilon prediction
    snr_gamma: float = 5.0
    snr_floor: float = 0.0
    unet_channels: tuple[int, int, int] = UNET_CHANNELS
    #: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x); zero terminal SNR needs v_prediction
    prediction_type: str = "epsilon"
    zero_snr: bool = False
    #: the last ``lr_decay_steps`` of ``unet_steps`` anneal both learning rates to zero (cosine);
    #: before them the rates are constant after a 200-step warm-up
    lr_decay_steps: int = 0
    checkpoint_every: int = 500
