"""Training of every toy-world artefact, deterministically from seeds.

Stages (each a function, all driven by :func:`train_all`):

1. render a fixed training set (:func:`evallearn_toy.render.render_dataset`);
2. the classifier judge (:mod:`.classifier`);
3. the VAE, an attention-free ``AutoencoderKL`` with a factor-2 latent (32x32x3 -> 16x16x4),
   trained with L1 + MSE reconstruction and a small KL term (Kingma & Welling, 2014;
   Rombach et al., 2022, "High-Resolution Image Synthesis with Latent Diffusion Models");
4. the toy CLIP (:mod:`.tiny_clip`), whose text tower also initialises the pipeline's text
   encoder, as Stable Diffusion uses CLIP's text tower;
5. the text-to-image model: ``UNet2DConditionModel`` + ``CLIPTextModel`` trained jointly with the
   DDPM noise-prediction objective (Ho et al., 2020) on cached latents, as in latent diffusion,
   with 10 % caption dropout for classifier-free guidance (Ho & Salimans, 2022), Min-SNR-5 loss
   weighting (Hang et al., 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"),
   constant learning rate after warm-up and an EMA of the weights, which is what is saved.

Every random draw comes from a generator seeded by ``(seed, stage, step)``, so a run is a pure
function of its seed and budgets (on the same torch build and thread count), and a run resumed
from a checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import ToyClassifier, augment
from .concepts import caption_for, full_caption
from .render import COLOURS, HEADS, IMAGE_SIZE, SHAPES, STYLES, render_dataset

PIPELINE_DIR, CLIP_DIR, CLASSIFIER_DIR = "pipeline", "clip", "classifier"
CLIP_INIT_DIR = "clip_init"  # the toy CLIP after ``clip_steps``: the text encoder's initialisation


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
    unet_channels: tuple[int, int, int] = (24, 48, 64)
    #: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x); zero terminal SNR needs v_prediction
    prediction_type: str = "epsilon"
    zero_snr: bool = False
    #: the last ``lr_decay_steps`` of ``unet_steps`` anneal both learning rates to zero (cosine);
    #: before them the rates are constant after a 200-step warm-up
    lr_decay_steps: int = 0
    checkpoint_every: int = 500


def _log_to(path: Path | None):
    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if path is not None:
            with open(path, "a") as f:
                f.write(line + "\n")

    return log


# --------------------------------------------------------------------------- data


def render_training_set(n: int, seed: int, workers: int = 2, tinted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` images of data set ``seed`` (deterministic, chunked over processes)."""
    if workers <= 1 or n < 2000:
        return render_dataset(n, seed, tinted=tinted)
    from concurrent.futures import ProcessPoolExecutor

    chunks = [(start, min(n, start + 5000)) for start in range(0, n, 5000)]
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_render_chunk, [(b - a, seed, a, tinted) for a, b in chunks]))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _render_chunk(args):
    n, seed, start, tinted = args
    return render_dataset(n, seed, start=start, tinted=tinted)


# --------------------------------------------------------------------------- classifier


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


@torch.no_grad()
def classifier_accuracy(model: ToyClassifier, images, labels) -> dict[str, float]:
    probs = model.predict(images)
    return {h: float((probs[h].argmax(1).numpy() == labels[:, k]).mean()) for k, h in enumerate(HEADS)}


# --------------------------------------------------------------------------- VAE


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=[32, 32],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


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
        out.append(vae.encode(x).latent_dist.mean)
    return torch.cat(out)


@torch.no_grad()
def vae_psnr(vae, images) -> float:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


# --------------------------------------------------------------------------- text-to-image


def build_unet(channels: tuple[int, int, int] = (24, 48, 64)):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tiny_clip import clip_text_config

    return CLIPTextModel(CLIPTextConfig(**clip_text_config()))


def _schedule_config(zero_snr: bool, prediction_type: str) -> dict:
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps); with
    ``zero_snr`` rescaled to zero terminal SNR and sampled with "trailing" timesteps, as Lin et al.
    (WACV 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed") prescribe; that
    needs v-prediction (Salimans & Ho, 2022), which Stable Diffusion 2.x uses."""
    cfg = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               prediction_type=prediction_type)  # fmt: skip
    if zero_snr:
        cfg.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return cfg


def noise_scheduler(zero_snr: bool = False, prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**_schedule_config(zero_snr, prediction_type))


def sampling_scheduler(zero_snr: bool = False, prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**_schedule_config(zero_snr, prediction_type), clip_sample=False, set_alpha_to_one=False,
                         steps_offset=0 if zero_snr else 1)  # fmt: skip


def make_pipeline(unet, vae, text_encoder, scheduler=None):
    from diffusers import StableDiffusionPipeline

    from evallearn.models.tokenizer import load_clip_tokenizer

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler or sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class EMA:
    """Exponential moving average of parameters, decay ``min(max_decay, (1+s)/(10+s))``."""

    def __init__(self, modules, max_decay: float = 0.999):
        self.max_decay = max_decay
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]

    @torch.no_grad()
    def update(self, modules, step: int, foreach: bool = True) -> None:
        d = min(self.max_decay, (1 + step) / (10 + step))
        for sm, m in zip(self.shadow, modules, strict=True):
            shadow, live = list(sm.parameters()), [p.detach() for p in m.parameters()]
            if foreach:  # one fused call instead of a Python loop over ~400 small tensors
                torch._foreach_lerp_(shadow, live, 1 - d)
            else:
                for ps, p in zip(shadow, live, strict=True):
                    ps.lerp_(p, 1 - d)
            for bs, b in zip(sm.buffers(), m.buffers(), strict=True):
                bs.copy_(b)


def _save_fp16(pipe, path: Path) -> None:
    """Save with fp16 weight files (half the size); they load back into fp32 modules."""
    pipe.save_pretrained(path, safe_serialization=True)
    from safetensors.torch import load_file, save_file

    for sub in ("unet", "text_encoder"):
        for f in (path / sub).glob("*.safetensors"):
            sd = load_file(str(f))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(f),
                      metadata={"format": "pt"})  # fmt: skip


def _plain(module):
    """A copy in the default (contiguous) memory format, as saving and sampling expect."""
    return copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()


def _lr_factor(step: int, budgets: Budgets, warmup: int = 200) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, constant, then a cosine anneal to 0
    over the last ``budgets.lr_decay_steps`` steps."""
    f = min(1.0, (step + 1) / warmup)
    decay = min(budgets.lr_decay_steps, budgets.unet_steps)
    start = budgets.unet_steps - decay
    if decay > 0 and step >= start:
        f *= 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / decay)))
    return f


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
    writes the EMA pipeline to ``out_dir/ckpt-<step>`` (the last one is kept as ``latest``).
    """
    from evallearn.models.tokenizer import load_clip_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_clip_tokenizer()
    torch.manual_seed(seed)
    unet = build_unet(budgets.unet_channels).to(memory_format=torch.channels_last)
    text_encoder = build_text_encoder()
    if text_init_state is not None:
        text_encoder.load_state_dict(text_init_state)
    # The token embedding (49408 x 64, 97 % of the encoder) stays as CLIP learned it; the
    # transformer layers are fine-tuned at a low learning rate.
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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, budgets=budgets))
    ema = EMA([unet, text_encoder])
    start = 0
    state_path = out_dir / "state.pt"
    if state_path.exists():
        state = load_training_state(state_path)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        ema.shadow[0].load_state_dict(state["ema_unet"])
        ema.shadow[1].load_state_dict(state["ema_text"])
        start = state["step"]
        log(f"t2i: resumed at step {start}")

    ns = noise_scheduler(budgets.zero_snr, budgets.prediction_type)
    sampler = sampling_scheduler(budgets.zero_snr, budgets.prediction_type)
    alphas = ns.alphas_cumprod
    snr = alphas / (1 - alphas)
    x0_weight = torch.clamp(snr, min=budgets.snr_floor, max=budgets.snr_gamma)
    v_pred = budgets.prediction_type == "v_prediction"
    # the same x0-space weighting expressed for the network's output: L_eps = SNR * L_x0,
    # L_v = (SNR + 1) * L_x0
    weight_by_t = x0_weight / (snr + 1) if v_pred else x0_weight / snr
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    t0 = time.time()
    losses: list[float] = []
    bs = budgets.unet_batch
    for step in range(start, budgets.unet_steps):
        rng = np.random.default_rng([seed, 5, step])
        idx = rng.choice(len(latents), size=bs, replace=False)
        caps = [caption_for(labels[i], rng) for i in idx]
        ids = tokenizer(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        drop = torch.from_numpy(rng.random(bs) < 0.1)
        ids[drop] = empty_ids
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x0 = latents[idx].contiguous(memory_format=torch.channels_last)
        noise = torch.randn(x0.shape, generator=g).contiguous(memory_format=torch.channels_last)
        # half the batch uniform over all timesteps, half over the noisier 60 %, where the
        # layout (and so the shape) is decided; Min-SNR weighting then balances the loss
        n_steps = ns.config.num_train_timesteps
        t = torch.randint(0, n_steps, (bs,), generator=g)
        hi = torch.randint(int(0.4 * n_steps), n_steps, (bs,), generator=g)
        t = torch.where(torch.arange(bs) % 2 == 1, hi, t)
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
            torch.save(
                {
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "ema_unet": ema.shadow[0].state_dict(),
                    "ema_text": ema.shadow[1].state_dict(),
                    "step": done,
                },
                state_path,
            )
            pipe = make_pipeline(_plain(ema.shadow[0]), vae, ema.shadow[1], sampler)
            ck = out_dir / f"ckpt-{done:05d}"
            _save_fp16(pipe, ck)
            log(f"t2i: checkpoint {ck}")
            if evaluate_with is not None:
                res = evaluate_pipeline(pipe, evaluate_with, n_per_shape=5)
                log(f"t2i: step {done} quick eval {summary_line(res)}")
    return make_pipeline(_plain(ema.shadow[0]), vae, ema.shadow[1], sampler)


def load_training_state(path: Path) -> dict:
    """A resume checkpoint (``state.pt``) read with ``weights_only=True``: tensors, numbers and
    containers only, so a crafted pickle in the output folder runs nothing; anything else is a
    one-line error naming the file."""
    import pickle

    from evallearn.errors import UserError

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a training checkpoint this version can resume from "
                        f"(delete it to start over): {first}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{path}: not a training checkpoint (no 'step'); delete it to start over")
    return state


# --------------------------------------------------------------------------- evaluation


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
def generate(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 6.0, batch: int = 32):
    """Images as float ``[N, H, W, 3]`` in [0, 1] (one seeded generator per image)."""
    outs = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        res = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   output_type="np")  # fmt: skip
        outs.append(res.images)
    return np.concatenate(outs)


@torch.no_grad()
def evaluate_pipeline(
    pipe, classifier: ToyClassifier, n_per_shape: int = 32, steps: int = 20, guidance: float = 6.0,
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
    m = res["mean"]
    per = " ".join(f"{s}={v['shape']:.2f}" for s, v in res["per_shape"].items())
    return f"shape {m['shape']:.3f} colour {m['colour']:.3f} style {m['style']:.3f} | {per}"


# --------------------------------------------------------------------------- all stages


def train_all(
    out: str | Path,
    budgets: Budgets | None = None,
    seed: int = 0,
    stages: tuple[str, ...] = ("classifier", "vae", "clip", "t2i"),
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
    log = log or _log_to(out / "train.log")
    if threads:
        torch.set_num_threads(threads)
    (out / "budgets.json").write_text(json.dumps({"seed": seed, **asdict(budgets)}, indent=2) + "\n")
    t_all = time.time()
    timings: dict[str, float] = {}

    t = time.time()
    data_path = out / "data.npz"
    if data_path.exists():
        d = np.load(data_path)
        images, labels = d["images"], d["labels"]
    else:
        images, labels = render_training_set(budgets.n_train, seed)
        np.savez(data_path, images=images, labels=labels)
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

    from .tiny_clip import train_toy_clip, zero_shot_accuracy

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
        _save_fp16(pipe, out / PIPELINE_DIR)
        timings["t2i"] = time.time() - t

    if {"clip", "clip_more"} & set(stages) or not (out / CLIP_DIR).exists():
        # The shipped toy CLIP: the one above, trained further (a fresh schedule, its own draws).
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
