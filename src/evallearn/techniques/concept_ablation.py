"""Concept Ablation (Kumari, Zhang, Wang, Shechtman, Zhu & Zhu, ICCV 2023, "Ablating Concepts in
Text-to-Image Diffusion Models", arXiv:2303.13516; code: nupurkmr9/concept-ablation,
``diffusers/train.py``).

The target concept ``c*`` is mapped onto an *anchor* concept ``c`` ("Grumpy Cat" → "cat", "Van
Gogh" → "paintings"): the base model generates ``num_class_images`` images from anchor prompts
(DDIM with η = 1: 25 steps, guidance 6; the authors' script asks for η = 1 but samples with
DPM-Solver, which ignores it), and the model is trained so that, on those
noised anchor images, its prediction for the *target* prompt matches its own stop-gradient
prediction for the *anchor* prompt (the "model-based" loss, the code's default):

    L = || ε_θ(x_t, c*, t) − sg(ε_θ(x_t, c, t)) ||²,   x_t = noised anchor image

``loss: noise`` is the paper's other variant (target = the added noise). Target prompts are the
anchor prompts with the anchor word replaced by the concept (objects), or the anchor prompt
wrapped in the script's style / nudity templates. Defaults are the README's object recipe:
cross-attention keys and values (``parameter_group: cross-attn``), Adam(W) lr 2e-6 scaled by
the total batch (4 per GPU × 2 GPUs = 8, so 1.6e-5), 100 steps, 1000 anchor images,
weight decay 1e-2, gradient clipping 1, random flips. The authors' anchor prompts are 200
ChatGPT captions of the anchor; here they are caption templates of the anchor
(``anchor_prompts``), on the toy model its own caption templates over colours and styles.
The script's image-scale augmentation with masked loss is not reproduced (random flips are).
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from ..components import Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..progress import progress_bar
from . import training as T
from .base import Technique


class ConceptAblationParams(T.TrainingParams):
    #: the anchor concept (default: the toy world's "shape" for its objects; required elsewhere)
    anchor: str | None = None
    #: prompts naming the anchor; default: caption templates of the anchor
    anchor_prompts: tuple[str, ...] | None = None
    loss: Literal["model", "noise"] = "model"
    parameter_group: Literal["cross-attn", "attn", "full-weight"] = "cross-attn"
    num_class_images: int = Field(1000, ge=1)
    image_steps: int = Field(25, ge=1)
    image_guidance: float = Field(6.0, ge=0)
    image_eta: float = Field(1.0, ge=0)
    steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    #: base learning rate; the effective one is lr x batch_size (the script's --scale_lr)
    lr: float = Field(2e-6, gt=0)
    scale_lr: bool = True
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    random_flip: bool = True


def _group_filter(group: str):
    if group == "cross-attn":
        return lambda n: "attn2.to_k" in n or "attn2.to_v" in n
    if group == "attn":
        return lambda n: any(k in n for k in ("to_q", "to_k", "to_v", "to_out"))
    return lambda n: True


def target_prompt(anchor_prompt: str, anchor: str, concept: str, kind: str, rng: random.Random) -> str:
    """The script's ``__getprompt__``: replace the anchor (objects) or wrap the anchor prompt."""
    if kind == "style":
        r = rng.randrange(3)
        return f"{anchor_prompt}, in the style of {concept}" if r == 0 else f"in {concept}'s style, {anchor_prompt}"
    if kind == "nudity":
        r = rng.randrange(3)
        return (f"{concept}, {anchor_prompt}" if r == 0 else f"in {concept} style, {anchor_prompt}" if r == 1
                else f"{anchor_prompt}, {concept}")
    return re.sub(rf"\b{re.escape(anchor)}\b", concept, anchor_prompt)


class ConceptAblation(Technique):
    description = "Concept Ablation: match the concept's predictions to an anchor concept's on anchor images."
    paper = "Kumari et al., ICCV 2023"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = ConceptAblationParams

    def apply(self, pipe, ctx: RunContext):
        import torch

        p = self.params
        anchor = p.anchor or T.default_anchor(ctx)
        if not anchor:
            raise UserError("technique 'concept_ablation': set technique.params.anchor (the concept to map onto)")
        gen = T.seed_everything(ctx.seed)
        rng = random.Random(ctx.seed)
        prompts = list(p.anchor_prompts or T.caption_prompts(ctx, anchor))
        class_prompts = [prompts[i % len(prompts)] for i in range(p.num_class_images)]
        seeds = [ctx.seed * 1_000_003 + i for i in range(p.num_class_images)]
        latents = T.generate_latents(pipe, class_prompts, seeds, p.image_steps, p.image_guidance, ctx.height,
                                     ctx.width, eta=p.image_eta, label="anchor images")
        unet = pipe.unet
        params = T.select_params(unet, _group_filter(p.parameter_group))
        pipe.text_encoder.requires_grad_(False)
        amp = T.setup_execution(pipe, p)
        lr = p.lr * p.batch_size if p.scale_lr else p.lr
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=p.weight_decay, eps=1e-8)
        order: list[int] = []
        unet.train()
        with progress_bar("concept ablation", p.steps) as advance:
            for _ in range(p.steps):
                if len(order) < p.batch_size:
                    order += torch.randperm(len(class_prompts), generator=gen).tolist()
                idx, order = order[: p.batch_size], order[p.batch_size:]
                x0 = latents[idx].to(unet.device)
                if p.random_flip:
                    x0 = T.hflip(x0, gen)
                xt, noise, t = T.add_noise(pipe, x0, gen)
                anchors = [class_prompts[i] for i in idx]
                targets = [target_prompt(a, anchor, ctx.concept.name, ctx.concept.kind, rng) for a in anchors]
                with amp.autocast():
                    pred = unet(xt, t, encoder_hidden_states=T.encode(pipe, targets)).sample.float()
                if p.loss == "model":
                    with torch.no_grad(), amp.autocast():
                        goal = unet(xt, t, encoder_hidden_states=T.encode(pipe, anchors)).sample.float()
                else:
                    goal = noise
                loss = torch.nn.functional.mse_loss(pred, goal)
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt, params, p.max_grad_norm)
                advance(1, loss=f"{loss.item():.4f}")
        unet.eval()
        unet.requires_grad_(False)
        return pipe
