"""The latent classifier of Lu et al.'s classifier-guidance probe (2025, arXiv:2505.17013;
``classifier_guidance/create_latent_classifier.py`` in kevinlu4588/WhenAreConceptsErased).

A binary "is it the concept?" classifier on *noisy* VAE latents with the timestep as input: the
flattened latent x_t goes through Linear(D→1024), the time embedding [sqrt(ᾱ_t), sqrt(1 - ᾱ_t)]
through Linear(2→1024); their sum goes through SiLU, Dropout 0.3, Linear(1024→512), SiLU,
Dropout 0.3, Linear(512→1). Training as the authors': positives are real images of the concept
and negatives real images of other classes (ImageNet there; the toy world's renders here), each
encoded once by the VAE (a posterior sample × scaling factor); per batch, 7 noisy copies with
t = ⌊u^(1/3) · 999⌋ (density ∝ t², biased toward noisy latents) noised by the scheduler's
``add_noise``; BCE-with-logits with ``pos_weight`` = #neg/#pos; AdamW lr 1e-4, weight decay
1e-3, gradient-norm clip 1; 90/10 train/validation split (seed 42); validation averages the
logits over 3 random timesteps per sample; the checkpoint with the lowest validation loss is
kept. The paper trains 70 epochs at batch size 8. Saved as safetensors plus a JSON config
(the authors pickle the whole optimiser state and need the scheduler at construction time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError


class LatentClassifier(nn.Module):
    def __init__(self, latent_shape: tuple[int, ...], alphas_cumprod: torch.Tensor, hidden: int = 1024,
                 hidden2: int = 512, dropout: float = 0.3) -> None:
        super().__init__()
        self.latent_shape = tuple(int(v) for v in latent_shape)
        dim = int(np.prod(self.latent_shape))
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float().clone())
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Linear(2, hidden)
        self.head = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden2), nn.SiLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden2, 1))
        self.config = {"latent_shape": list(self.latent_shape), "hidden": hidden, "hidden2": hidden2,
                       "dropout": dropout}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(x.device)[t.long().to(x.device)]
        emb = torch.stack([a.sqrt(), (1 - a).sqrt()], -1).to(x.dtype)
        return self.head(self.inp(x.flatten(1)) + self.time(emb)).squeeze(-1)

    def save(self, folder: Path, metrics: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**self.config, "metrics": metrics or {}}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> LatentClassifier:
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise UserError(f"latent classifier {folder}: needs config.json and model.safetensors "
                            "(train one with `eval-learn train-latent-classifier`)")
        cfg = json.loads((folder / "config.json").read_text())
        state = load_file(str(folder / "model.safetensors"))
        model = cls(tuple(cfg["latent_shape"]), state["alphas_cumprod"], cfg["hidden"], cfg["hidden2"], cfg["dropout"])
        model.load_state_dict(state)
        return model.to(device).eval()


def _timesteps(n: int, power: float, generator: torch.Generator, n_train: int = 1000) -> torch.Tensor:
    u = torch.rand(n, generator=generator)
    return (u ** (1.0 / power) * (n_train - 1)).floor().long()


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def train_latent_classifier(pipe, positives: np.ndarray, negatives: np.ndarray, *, epochs: int = 70,
                            batch_size: int = 8, lr: float = 1e-4, weight_decay: float = 1e-3,
                            noise_draws: int = 7, timestep_power: float = 3.0, seed: int = 42,
                            log=None) -> tuple[LatentClassifier, dict]:
    """Train on uint8 image arrays of the concept (``positives``) and of other classes."""
    from . import _sampling

    if len(positives) < 2 or len(negatives) < 2:
        raise UserError("latent classifier: needs at least 2 positive and 2 negative images")
    gen = torch.Generator("cpu").manual_seed(seed)
    lat = []
    for imgs in (positives, negatives):
        chunks = [_sampling.encode(pipe, imgs[i:i + 64], sample=True, generator=gen).float().cpu()
                  for i in range(0, len(imgs), 64)]
        lat.append(torch.cat(chunks))
    x = torch.cat(lat)
    y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
    perm = torch.randperm(len(x), generator=torch.Generator("cpu").manual_seed(42))
    n_val = max(2, len(x) // 10)
    val, tr = perm[:n_val], perm[n_val:]
    sched = pipe.scheduler
    model = LatentClassifier(tuple(x.shape[1:]), sched.alphas_cumprod)
    n_pos = float(y[tr].sum())
    pos_weight = torch.tensor((len(tr) - n_pos) / max(n_pos, 1.0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    alphas = sched.alphas_cumprod.float()

    def noisy(z, t, g):
        eps = torch.randn(z.shape, generator=g)
        a = alphas[t].view(-1, *([1] * (z.dim() - 1)))
        return a.sqrt() * z + (1 - a).sqrt() * eps

    best, best_state, history = float("inf"), None, []
    for epoch in range(epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            z = x[idx].repeat(noise_draws, 1, 1, 1)
            t = _timesteps(len(z), timestep_power, gen)
            loss = F.binary_cross_entropy_with_logits(model(noisy(z, t, gen), t), y[idx].repeat(noise_draws),
                                                      pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        with torch.no_grad():
            vg = torch.Generator("cpu").manual_seed(1000 + epoch)
            logits = torch.stack([model(noisy(x[val], t, vg), t)
                                  for t in (_timesteps(len(val), timestep_power, vg) for _ in range(3))]).mean(0)
            vloss = float(F.binary_cross_entropy_with_logits(logits, y[val], pos_weight=pos_weight))
        auc = _roc_auc(y[val].numpy(), logits.numpy())
        history.append({"epoch": epoch, "val_loss": vloss, "roc_auc": auc})
        if log:
            log(epoch=epoch, val_loss=vloss, roc_auc=auc)
        if vloss < best:
            best, best_state = vloss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    best_epoch = min(history, key=lambda h: h["val_loss"])
    metrics = {"best": best_epoch, "n_pos": len(positives), "n_neg": len(negatives), "epochs": epochs,
               "n_val": int(n_val)}
    return model, metrics


def folder_images(folder: str | Path, size: int) -> np.ndarray:
    from PIL import Image

    folder = Path(folder).expanduser()
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise UserError(f"latent classifier: no images in {folder}")
    out = []
    for p in files:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    return np.stack(out)


#: the version of this module's classifier and training; enters every cached classifier's key
VERSION = "1"


def classifier_spec(probe, device_dtype: str) -> dict:
    """The complete key of a latent classifier trained for ``probe`` (a classifier-guidance probe):
    its training params and the content of its image folders, the concept and seed (the toy
    world renders its training images from them), the image size the folders are resized to,
    the base model whose VAE encodes the images (ref and weights fingerprint), the dtype and the
    code versions."""
    from ..cache import plain
    from ..models.loading import resolve_model

    ctx, p = probe.ctx, probe.params
    base = ctx.config.base_model or ctx.config.model
    info = ctx.model if base == ctx.config.model else resolve_model(base)
    train = {k: v for k, v in p.model_dump(mode="json").items() if k.startswith("train_")}
    folders = {k: _folder_digest(Path(train[k]).expanduser())
               for k in ("train_positives", "train_negatives") if train.get(k) and Path(train[k]).expanduser().is_dir()}
    return {"kind": "latent_classifier", "name": "latent_classifier", "version": VERSION,
            "probe": {"name": probe.name, "version": probe.version}, "train": train, "folders": folders,
            "concept": plain(ctx.concept), "seed": ctx.seed, "size": [ctx.height, ctx.width],
            "base": {"ref": base, "fingerprint": info.fingerprint}, "dtype": device_dtype}


def _folder_digest(folder: Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``folder``."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def cached_classifier(root: Path, spec: dict, train, device: str) -> tuple[LatentClassifier, dict]:
    """The classifier of ``spec`` from the cache under ``root``, or ``train()`` (returning
    ``(classifier, metrics)``) stored there; with what to record about it."""
    from ..cache import Cache

    cache = Cache(root)
    (clf, metrics), cached = cache.get_or_compute(
        spec, train, save=lambda value, folder: value[0].save(folder, value[1]),
        load=lambda folder: (LatentClassifier.load(folder, device), None))
    info = {"classifier": str(cache.path(spec)), "cached": cached}
    if not cached:
        info["training"] = metrics
    return clf.to(device), info
