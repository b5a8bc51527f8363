"""A tiny ``CLIPModel`` for the toy world, trained contrastively on captions and renders.

It is a real ``transformers`` ``CLIPModel`` (ViT image tower on 4x4 patches of 32x32 images,
causal text transformer with the real CLIP BPE tokenizer) saved with ``save_pretrained`` next
to a ``CLIPProcessor``, so CLIP-based metrics and judges run on the toy world through exactly
the code they run with on real CLIP.

Training follows CLIP's symmetric contrastive objective (Radford et al., 2021, "Learning
Transferable Visual Models From Natural Language Supervision"), with one change for this world:
captions are often partial ("a red shape") so several images in a batch can match one caption.
The targets are therefore the normalised compatibility matrix (1 where the image has every
attribute the caption mentions), in the spirit of multi-positive / supervised contrastive
losses (Khosla et al., 2020), instead of the identity.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import augment
from .concepts import sample_caption
from .render import HEADS, IMAGE_SIZE

TEXT_HIDDEN = 64


def clip_text_config() -> dict:
    """The text tower, shared with the toy pipeline's ``CLIPTextModel`` (SD uses CLIP's text tower):
    64 wide, 3 layers of 4 heads, MLP 256, the real CLIP vocabulary."""
    from evallearn.models.tiny import clip_text_config as small_clip_text_config

    return small_clip_text_config(TEXT_HIDDEN, intermediate_size=256, heads=4, layers=3)


def build_toy_clip(seed: int = 0, image_size: int = IMAGE_SIZE):
    """A randomly initialised toy ``CLIPModel`` and its ``CLIPProcessor``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from evallearn.models.tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=clip_text_config(),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_attention_heads=4,
            num_hidden_layers=3,
            image_size=image_size,
            patch_size=4,
        ),
        projection_dim=64,
    )
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=load_clip_tokenizer())
    return model, processor


def _normalise(x: torch.Tensor, processor) -> torch.Tensor:
    """What ``CLIPProcessor`` does to a 32x32 image already in [0, 1]: mean/std normalisation."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def compatibility(labels: np.ndarray, mentioned: list[dict[str, int]]) -> torch.Tensor:
    """``C[i, j] = 1`` when image ``i`` has every attribute caption ``j`` mentions."""
    n = len(mentioned)
    c = np.ones((labels.shape[0], n), dtype=np.float32)
    for j, m in enumerate(mentioned):
        for head, cls in m.items():
            c[:, j] *= labels[:, HEADS.index(head)] == cls
    return torch.from_numpy(c)


def clip_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, scale: torch.Tensor, compat: torch.Tensor):
    """Symmetric contrastive loss with soft multi-positive targets."""
    img = F.normalize(img_emb, dim=-1)
    txt = F.normalize(txt_emb, dim=-1)
    logits = scale * img @ txt.t()
    t_i2t = compat / compat.sum(1, keepdim=True)
    t_t2i = (compat / compat.sum(0, keepdim=True)).t()
    loss_i = -(t_i2t * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(t_t2i * logits.t().log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def train_toy_clip(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log=print,
    init=None,
    stream: int = 7,
):
    """Train the toy CLIP; returns ``(model, processor)`` in eval mode.

    ``init=(model, processor)`` continues training an existing model (with a fresh optimiser and
    schedule); ``stream`` separates the random draws of separate runs.
    """
    model, processor = init if init is not None else build_toy_clip(seed)
    tokenizer = processor.tokenizer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(s, steps) / steps))
    )
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)
    t0 = time.time()
    for step in range(steps):
        rng = np.random.default_rng([seed, stream, step])
        idx = rng.choice(len(images), size=batch_size, replace=False)
        caps, mentioned = zip(*(sample_caption(labels[i], rng) for i in idx), strict=True)
        g = torch.Generator().manual_seed(seed * 1_000_003 + stream * 100_003 + step)
        x = augment(x_all[idx].float() / 255.0, g)
        tok = tokenizer(list(caps), padding=True, return_tensors="pt")
        img_emb = model.get_image_features(pixel_values=_normalise(x, processor)).pooler_output
        txt_emb = model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        compat = compatibility(labels[idx], list(mentioned))
        loss = clip_loss(img_emb, txt_emb, model.logit_scale.exp().clamp(max=100), compat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    return model.eval(), processor


@torch.no_grad()
def zero_shot_accuracy(model, processor, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Zero-shot accuracy per head with prompts like ``"a photo of a circle"`` / ``"a red shape"``.

    Goes through ``processor`` and ``get_*_features`` exactly as a CLIP metric would.
    """
    from .concepts import fill_template
    from .render import CLASSES

    t = "a photo of {a} {d}"
    prompts = {
        "shape": [fill_template(t, s) for s in CLASSES["shape"]],
        "colour": [fill_template(t, f"{c} shape") for c in CLASSES["colour"]],
        "style": [fill_template(t, f"{s} shape") for s in CLASSES["style"]],
        "background": [f"a shape on a {b} background" for b in CLASSES["background"]],
    }
    inputs = processor(images=list(images), return_tensors="pt")
    img = F.normalize(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1)
    out = {}
    for head, texts in prompts.items():
        tok = processor(text=texts, padding=True, return_tensors="pt")
        txt = F.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
        pred = (img @ txt.t()).argmax(1).numpy()
        out[head] = float((pred == labels[:, HEADS.index(head)]).mean())
    return out
