"""CoGFD — Concept Graph-based high-level Feature Decoupling (Nie, Wu, Song, Wang & Xu, ICLR
2025, "Erasing Concept Combination from Text-to-Image Diffusion Model"; code:
Sirius11311/CoGFD-ICLR25, ``concept_combination_erasing.py``, ``img_prepare.py``, ``run.sh``).

A harmful *combination* of individually harmless concepts ("underage" + "alcohol") is erased
while its sub-concepts are kept. The paper builds a concept logic graph with an LLM: prompts
equivalent to the combination (erased, label p1) and the sub-concepts it decomposes into
(decoupled, label p2). Here those two prompt lists are parameters (``combination_prompts``,
``sub_concepts``); no LLM is called. Training, as in the authors' script: the base model makes
images of the combination ("an image of  <combination>", 5 seeds, guidance 9, 100 steps); every
prompt is paired with one of them; noised to a timestep in ``[t_start, t_end)`` (990–1000),
the fine-tuned UNet and a frozen copy predict the noise with the prompt (the text encoder masked to
the prompt's tokens; in cross-attention the prompt's 0/1 mask is *added* to the logits, as the
script's attention processor does: real tokens +1, padding +0, nothing cut out), and

    L = 0.1 · exp(−MSE_erase(ε_θ, ε*)) + exp(MSE_keep(ε_θ, ε*))

pushes the combination's predictions away from the original's (bounded by the exponential)
while keeping the sub-concepts' equal to it. Defaults are ``run.sh``: lr 2.5e-5, 130 steps,
cross-attention parameters except the value projections (``--only_xa``), batch
``min(#prompts, 20)``, AdamW (weight decay 1e-2), gradient clipping 1.

Defaults for our concepts: the combination is the run's concept (with its synonyms), the
sub-concepts are its retain concepts.
"""

from __future__ import annotations

from pydantic import Field

from ..components import Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..models import text
from ..progress import progress_bar
from . import training as T
from ._attention import CrossAttnProcessor, set_cross_processors
from .base import Technique


class CoGFDParams(T.TrainingParams):
    #: prompts equivalent to the combination to erase; default: the concept and its synonyms
    combination_prompts: tuple[str, ...] | None = None
    #: sub-concept prompts whose generations are kept; default: the concept's retain concepts
    sub_concepts: tuple[str, ...] | None = None
    #: the combination used to make the training images; default: the concept's name
    image_prompt: str | None = None
    image_seeds: tuple[int, ...] = (188, 288, 588, 688, 888)
    image_steps: int = Field(100, ge=1)
    image_guidance: float = Field(9.0, ge=0)
    lr: float = Field(2.5e-5, gt=0)
    steps: int = Field(130, ge=1)
    max_batch_size: int = Field(20, ge=1)
    #: train cross-attention except to_v (the script's --only_xa); False = the whole UNet
    only_xa: bool = True
    t_start: int = Field(990, ge=0)
    t_end: int = Field(1000, ge=1)
    erase_weight: float = Field(0.1, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)


class CoGFD(Technique):
    description = "CoGFD: erase a concept combination, decoupled from its sub-concepts (exp-bounded losses)."
    paper = "Nie et al., ICLR 2025"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = CoGFDParams

    def apply(self, pipe, ctx: RunContext):
        import torch

        p = self.params
        if p.t_end <= p.t_start:
            raise UserError("technique 'cogfd': t_end must be greater than t_start")
        gen = T.seed_everything(ctx.seed)
        erase = list(p.combination_prompts or (ctx.concept.name, *ctx.concept.synonyms))
        keep = list(p.sub_concepts) if p.sub_concepts is not None else T.retain_words(ctx, None)
        if not keep:
            raise UserError("technique 'cogfd': no sub-concepts to keep (set technique.params.sub_concepts "
                            "or concept.retain)")
        prompts, labels = erase + keep, [True] * len(erase) + [False] * len(keep)
        image_prompt = f"an image of  {p.image_prompt or ctx.concept.name}"
        latents = T.generate_latents(pipe, [image_prompt] * len(p.image_seeds), list(p.image_seeds), p.image_steps,
                                     p.image_guidance, ctx.height, ctx.width, label="CoGFD images")
        unet = pipe.unet
        teacher = T.frozen_copy(unet)
        params = T.select_params(unet, (lambda n: "attn2" in n and "to_v" not in n) if p.only_xa else (lambda n: True))
        pipe.text_encoder.requires_grad_(False)
        amp = T.setup_execution(pipe, p)
        opt = torch.optim.AdamW(params, lr=p.lr, betas=(0.9, 0.999), weight_decay=p.weight_decay, eps=1e-8)
        tok = text.tokenize(pipe.tokenizer, prompts)
        ids, mask = tok.input_ids.to(unet.device), tok.attention_mask.to(unet.device)
        with torch.no_grad():
            cond = pipe.text_encoder(ids, attention_mask=mask)[0]
        # The script's cross-attention processor adds the 0/1 mask to the attention logits (real
        # tokens +1, padding +0): a soft bias, not a hard mask. One processor object on every attn2
        # of both UNets carries the batch's bias.
        bias_proc = CrossAttnProcessor()
        restore = [(m, set_cross_processors(m, lambda _name: bias_proc)) for m in (unet, teacher)]
        batch = min(len(prompts), p.max_batch_size)
        order: list[int] = []
        unet.train()
        with progress_bar("CoGFD", p.steps) as advance:
            for _ in range(p.steps):
                # a shuffled loader with drop_last; every prompt i is paired with image i mod #images
                if len(order) < batch:
                    perm = torch.randperm(len(prompts), generator=gen).tolist()
                    order = perm[: len(perm) - len(perm) % batch]
                idx, order = order[:batch], order[batch:]
                x0 = latents[[i % latents.shape[0] for i in idx]].to(unet.device)
                xt, _noise, t = T.add_noise(pipe, x0, gen, (p.t_start, p.t_end))
                c, bias_proc.token_bias = cond[idx], mask[idx].float()
                with amp.autocast():
                    pred = unet(xt, t, encoder_hidden_states=c).sample.float()
                with torch.no_grad(), amp.autocast():
                    ref = teacher(xt, t, encoder_hidden_states=c).sample.float()
                sel = torch.tensor([labels[i] for i in idx], device=unet.device)
                loss = pred.sum() * 0
                if sel.any():
                    loss = loss + p.erase_weight * torch.exp(-torch.nn.functional.mse_loss(pred[sel], ref[sel]))
                if (~sel).any():
                    loss = loss + torch.exp(torch.nn.functional.mse_loss(pred[~sel], ref[~sel]))
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt, params, p.max_grad_norm)
                advance(1, loss=f"{loss.item():.4f}")
        for model, before in restore:
            model.set_attn_processor(before)
        unet.eval()
        unet.requires_grad_(False)
        return pipe
