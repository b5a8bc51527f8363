"""The trained stages of the toy world: the classifier judge, the VAE and the text-to-image model.

* classifier: :class:`~evallearn_toy.classifier.ToyClassifier` with one cross-entropy per head,
  AdamW under a one-cycle schedule, augmented batches;
* VAE (:func:`train_vae`): L1 + MSE reconstruction and a small KL term (Kingma & Welling, 2014;
  Rombach et al., 2022, "High-Resolution Image Synthesis with Latent Diffusion Models") on random
  16 px crops;
* text-to-image (:func:`train_t2i`): ``UNet2DConditionModel`` + ``CLIPTextModel`` trained jointly
  with the DDPM noise-prediction objective (Ho et al., 2020) on cached latents, as in latent
  diffusion, with 10 % caption dropout for classifier-free guidance (Ho & Salimans, 2022),
  Min-SNR-5 loss weighting (Hang et al., 2023, "Efficient Diffusion Training via Min-SNR
  Weighting Strategy"), constant learning rate after warm-up and an EMA of the weights
  (:mod:`.ema`), which is what is saved.

Every random draw comes from a generator seeded by ``(seed, stage, step)``, so a stage is a pure
function of its seed and budgets (on the same torch build and thread count), and a resumed
text-to-image run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evallearn.models.sampling import vae_posterior

from ..classifier import ToyClassifier, augment
from ..render import HEADS
from .architecture import (
    build_text_encoder,
    build_unet,
    build_vae,
    make_pipeline,
    noise_scheduler,
    plain,
    sampling_scheduler,
    save_fp16,
)
from .budgets import Budgets
from .checkpoints import load_training_state, restore_training_state, save_training_state
from .data import caption_batch, empty_prompt_ids
from .ema import EMA
from .evaluate import evaluate_pipeline, summary_line

# ------------------------------------------------------------------------------ classifier


def train_classifier(
    images,
    labels,
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    log=print,
    tinted: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Train the judge on ``images``; with ``tinted`` (images, labels from ``render_dataset(...,
    tinted=True)``) every batch draws from both sets, and the tinted images train every head but
    ``background`` (their background is in no class)."""
    torch.manual_seed(seed)
    model = ToyClassifier()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    if tinted is not None:
        images, labels = np.concatenate([images, tinted[0]]), np.concatenate([labels, tinted[1]])
    n_plain = len(images) - (0 if tinted is None else len(tinted[0]))
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)
    y_all = torch.from_numpy(labels)
    bg = HEADS.index("background")
    t0 = time.time()
    for step in range(steps):
        rng = np.random.default_rng([seed, 1, step])
        idx = torch.from_numpy(rng.choice(len(images), size=batch_size, replace=False))
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x = augment(x_all[idx].float() / 255.0, g)
        out = model(x)
        y = y_all[idx].clone()
        y[idx >= n_plain, bg] = -100  # ignored by cross_entropy
        loss = sum(F.cross_entropy(out[h], y[:, k], ignore_index=-100) for k, h in enumerate(HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"classifier step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    return model.eval()


# ------------------------------------------------------------------------------ VAE


def train_vae(images, steps: int, seed: int, batch_size: int = 32, lr: float = 2e-3, crop: int = 16, log=print):
    """Train the VAE on random ``crop`` x ``crop`` patches (it is fully convolutional, so this is
    4x cheaper than whole 32 px images and generalises to them)."""
    torch.manual_seed(seed)
    vae = build_vae().to(memory_format=torch.channels_last)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)
    size = images.shape[1]
    t0 = time.time()
    for step in range(steps):
        rng = np.random.default_rng([seed, 2, step])
        idx = rng.choice(len(images), size=batch_size, replace=False)
        oy, ox = (2 * rng.integers(0, (size - crop) // 2 + 1, size=2)).tolist()
        x = x_all[idx, :, oy : oy + crop, ox : ox + crop].float() / 127.5 - 1
        x = x.contiguous(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1 - post.logvar).mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    vae = vae.to(memory_format=torch.contiguous_format).eval()
    return vae


@torch.no_grad()
def encode_latents(vae, images, batch_size: int = 500) -> torch.Tensor:
    """Unscaled posterior means of ``images`` (uint8 NHWC)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(vae_posterior(vae, x).mean)
    return torch.cat(out)


# ------------------------------------------------------------------------------ text-to-image


def lr_factor(step: int, budgets: Budgets, warmup: int = 200) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, constant, then a cosine anneal to 0
    over the last ``budgets.lr_decay_steps`` steps."""
    f = min(1.0, (step + 1) / warmup)
    decay = min(budgets.lr_decay_steps, budgets.unet_steps)
    start = budgets.unet_steps - decay
    if decay > 0 and step >= start:
        f *= 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / decay)))
    return f


def loss_weights(ns, budgets: Budgets) -> torch.Tensor:
    """Per-timestep weights of the network-output MSE: the x0-space weight clamp(SNR, snr_floor,
    snr_gamma) (Min-SNR-gamma, Hang et al., 2023) expressed for the prediction type
    (L_eps = SNR · L_x0, L_v = (SNR + 1) · L_x0)."""
    alphas = ns.alphas_cumprod
    snr = alphas / (1 - alphas)
    x0_weight = torch.clamp(snr, min=budgets.snr_floor, max=budgets.snr_gamma)
    return x0_weight / (snr + 1) if budgets.prediction_type == "v_prediction" else x0_weight / snr


def draw_timesteps(n_steps: int, bs: int, g: torch.Generator) -> torch.Tensor:
    """Half the batch uniform over all timesteps, half (the odd items) over the noisier 60 %, where
    the layout (and so the shape) is decided; Min-SNR weighting then balances the loss."""
    t = torch.randint(0, n_steps, (bs,), generator=g)
    hi = torch.randint(int(0.4 * n_steps), n_steps, (bs,), generator=g)
    return torch.where(torch.arange(bs) % 2 == 1, hi, t)


def train_t2i(
    latents: torch.Tensor,
    labels: np.ndarray,
    vae,
    text_init_state: dict | None,
    budgets: Budgets,
    seed: int,
    out_dir: Path,
    log=print,
    evaluate_with: ToyClassifier | None = None,
):
    """Train UNet + text encoder on scaled ``latents``; checkpoints go to ``out_dir``.

    ``out_dir/state.pt`` holds the raw weights, optimiser and EMA (resumable); each checkpoint
    writes the EMA pipeline to ``out_dir/ckpt-<step>``.
    """
    from evallearn.models.tokenizer import load_clip_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    unet = build_unet(budgets.unet_channels).to(memory_format=torch.channels_last)
    text_encoder = build_text_encoder()
    if text_init_state is not None:
        text_encoder.load_state_dict(text_init_state)
    # Optionally the token embedding (49408 x 64, 97 % of the encoder) stays as CLIP learned it.
    if budgets.freeze_token_embedding:
        text_encoder.get_input_embeddings().requires_grad_(False)
    text_params = [p for p in text_encoder.parameters() if p.requires_grad]
    unet.train()
    text_encoder.train()
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": budgets.unet_lr},
            {"params": text_params, "lr": budgets.text_lr},
        ],
        weight_decay=0.01,
        # on CPU torch defaults to a Python loop over the parameters; the multi-tensor kernels do
        # the same arithmetic with less overhead (benchmarks/bench_toy_train.py)
        foreach=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, budgets=budgets))
    ema = EMA([unet, text_encoder])
    start = 0
    state_path = out_dir / "state.pt"
    if state_path.exists():
        start = restore_training_state(load_training_state(state_path), unet, text_encoder, opt, sched, ema)
        log(f"t2i: resumed at step {start}")

    ns = noise_scheduler(budgets.zero_snr, budgets.prediction_type)
    sampler = sampling_scheduler(budgets.zero_snr, budgets.prediction_type)
    v_pred = budgets.prediction_type == "v_prediction"
    weight_by_t = loss_weights(ns, budgets)
    empty_ids = empty_prompt_ids(tokenizer)
    t0 = time.time()
    losses: list[float] = []
    bs = budgets.unet_batch
    for step in range(start, budgets.unet_steps):
        rng = np.random.default_rng([seed, 5, step])
        idx, ids = caption_batch(labels, len(latents), bs, tokenizer, empty_ids, rng)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x0 = latents[idx].contiguous(memory_format=torch.channels_last)
        noise = torch.randn(x0.shape, generator=g).contiguous(memory_format=torch.channels_last)
        t = draw_timesteps(ns.config.num_train_timesteps, bs, g)
        xt = ns.add_noise(x0, noise, t)
        cond = text_encoder(ids).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        target = ns.get_velocity(x0, noise, t) if v_pred else noise
        per = (pred - target).pow(2).mean(dim=(1, 2, 3))
        loss = (weight_by_t[t] * per).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + text_params, 1.0, foreach=True)
        opt.step()
        sched.step()
        ema.update([unet, text_encoder], step)
        losses.append(loss.item())
        done = step + 1
        if done % 50 == 0:
            log(f"t2i step {done}/{budgets.unet_steps} loss {np.mean(losses[-50:]):.4f} "
                f"({time.time() - t0:.0f}s, {(time.time() - t0) / (done - start):.2f}s/step)")  # fmt: skip
        if done % budgets.checkpoint_every == 0 or done == budgets.unet_steps:
            save_training_state(state_path, unet, text_encoder, opt, sched, ema, done)
            pipe = make_pipeline(plain(ema.shadow[0]), vae, ema.shadow[1], sampler)
            ck = out_dir / f"ckpt-{done:05d}"
            save_fp16(pipe, ck)
            log(f"t2i: checkpoint {ck}")
            if evaluate_with is not None:
                res = evaluate_pipeline(pipe, evaluate_with, n_per_shape=5)
                log(f"t2i: step {done} quick eval {summary_line(res)}")
    return make_pipeline(plain(ema.shadow[0]), vae, ema.shadow[1], sampler)
