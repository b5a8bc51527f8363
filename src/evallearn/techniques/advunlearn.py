"""AdvUnlearn (Zhang, Jia, Chen, Fan, Wang, Liu, Zhang & Liu, NeurIPS 2024, "Defensive Unlearning
with Adversarial Training for Robust Concept Erasure in Diffusion Models", arXiv:2405.15234;
code: OPTML-Group/AdvUnlearn, ``train-scripts/AdvUnlearn.py`` and ``utils/attack_util.py``,
``utils/get_loss.py``).

A bi-level loop around the ESD objective. Inner (attack) level: every
``adv_prompt_update_step`` iterations after ``warmup_iter`` plain-ESD iterations, a soft prompt
of ``adv_prompt_num`` word embeddings is prepended to the concept prompt (``prefix_k``,
initialised from random vocabulary tokens) and optimised for ``attack_step`` steps (Adam at
``attack_lr`` for ``pgd``; sign of the gradient for ``fast_at``) so that the *unlearned* model's
prediction matches the original model's prediction for the concept, ``min ||ε_θ(x_t, adv) −
ε*(x_t, c)||²``. Outer level: the ESD loss is applied to the model conditioned on the
adversarial prompt, plus the utility-retaining regulariser on a batch of retain prompts,

    L = ||ε_θ(x_t, adv) − (ε*(x_t, ∅) − η (ε*(x_t, c) − ε*(x_t, ∅)))||² + w · ||ε_θ(x'_t, r) − ε*(x'_t, r)||²

with ``x_t`` / ``x'_t`` from partial DDIM trajectories (as in ESD) of the concept / retain
prompts. The default trains the *text encoder* (``text_encoder_full``: all transformer layers
and the final layer norm, not the embeddings), the paper's recommended and released variant,
with the UNet frozen; UNet variants are the ESD sets. Defaults are the README's command and the
script's: 1000 iterations, lr 1e-5, warm-up 200, 30 attack steps, attack lr 1e-3, 1 adversarial
token, random initialisation, retain batch 5, retain weight 0.3, start guidance 3, η = 1,
50 DDIM steps. The retain set in the paper is COCO-object prompts; here it is the concept's
retain concepts (their caption templates on the toy model) or ``retain_prompts``.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from ..components import Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..progress import progress_bar
from . import training as T
from .base import Technique


class AdvUnlearnParams(T.TrainingParams):
    train_method: Literal["text_encoder_full", "xattn", "noxattn", "full"] = "text_encoder_full"
    #: text-encoder part trained by ``text_encoder_full``: all, only MLPs, only self-attention
    component: Literal["all", "ffn", "attn"] = "all"
    #: prompts of the erased concept (one drawn per iteration); default: the concept's name
    prompts: tuple[str, ...] | None = None
    #: retain prompts; default: the concept's retain concepts (caption templates on the toy model)
    retain_prompts: tuple[str, ...] | None = None
    retain_batch: int = Field(5, ge=1)
    retain_loss_w: float = Field(0.3, ge=0)
    iterations: int = Field(1000, ge=1)
    lr: float = Field(1e-5, gt=0)
    warmup_iter: int = Field(200, ge=0)
    attack_method: Literal["pgd", "fast_at"] = "pgd"
    attack_step: int = Field(30, ge=1)
    attack_lr: float = Field(1e-3, gt=0)
    adv_prompt_num: int = Field(1, ge=1)
    attack_init: Literal["random", "latest"] = "random"
    adv_prompt_update_step: int = Field(1, ge=1)
    start_guidance: float = Field(3.0, ge=0)
    negative_guidance: float = Field(1.0, ge=0)
    ddim_steps: int = Field(50, ge=1)


def text_encoder_filter(component: str):
    def keep(name: str) -> bool:
        name = name.removeprefix("text_model.")  # transformers < 5 nests the model
        if name.startswith("final_layer_norm"):
            return component == "all"
        if name.startswith("encoder"):
            return component == "all" or (component == "ffn" and "mlp" in name) or (
                component == "attn" and "self_attn" in name)
        return False

    return keep


class AdvUnlearn(Technique):
    description = "AdvUnlearn: ESD with adversarial soft prompts in the inner loop and retain regularisation."
    paper = "Zhang et al., NeurIPS 2024"
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = AdvUnlearnParams
    edits = ("text_encoder",)

    def __init__(self, params) -> None:
        super().__init__(params)
        self.edits = ("text_encoder",) if params.train_method.startswith("text_encoder") else ("unet",)

    def apply(self, pipe, ctx: RunContext):
        import torch

        p = self.params
        gen = T.seed_everything(ctx.seed)
        rng = random.Random(ctx.seed)
        words = T.concept_words(ctx, p.prompts)
        retain = list(p.retain_prompts) if p.retain_prompts is not None else default_retain(ctx)
        if p.retain_loss_w > 0 and not retain:
            raise UserError("technique 'advunlearn': no retain prompts (set concept.retain or "
                            "technique.params.retain_prompts)")
        unet, te = pipe.unet, pipe.text_encoder
        te_orig = T.frozen_copy(te)
        train_te = p.train_method.startswith("text_encoder")
        if train_te:
            unet.requires_grad_(False)
            teacher = unet  # the UNet never changes
            params = T.select_params(te, text_encoder_filter(p.component))
        else:
            te.requires_grad_(False)
            teacher = T.frozen_copy(unet)
            params = T.select_params(unet, T.unet_param_filter(p.train_method))
        amp = T.setup_execution(pipe, p, ("text_encoder",) if train_te else ("unet",))
        opt = T.make_optimizer(params, p.lr)
        sched = T.ddim_scheduler(pipe, p.ddim_steps)
        shape = T.latent_shape(pipe, ctx.height, ctx.width)
        null = T.encode(pipe, [""], te_orig)
        vocab = T.word_embeddings(te_orig).weight.detach()
        adv = None  # latest adversarial word embedding [1, k, d]
        order: list[int] = []

        def sample(cond, n, k):
            return T.esd_trajectory(unet, unet, sched, cond, null, p.start_guidance, (n, *shape), gen, k,
                                    amp.autocast)

        with progress_bar("AdvUnlearn", p.iterations) as advance:
            for i in range(p.iterations):
                if i % p.adv_prompt_update_step == 0:
                    word = rng.choice(words)
                    emb_p = T.encode(pipe, [word], te_orig)
                    if i >= p.warmup_iter:
                        adv = self.attack(pipe, teacher, sched, te, vocab, word, emb_p, sample, adv, gen, rng, amp)
                te.train(train_te)
                unet.train(not train_te)
                # unlearning term (ESD on the adversarial or, during warm-up, the plain prompt)
                k = rng.randrange(p.ddim_steps)
                t = sched.timesteps[k]
                x = sample(emb_p, 1, k)
                target = T.esd_target(teacher, x, t, emb_p, null, p.negative_guidance, amp.autocast)
                ids, embeds = (prompt_embeds(pipe, vocab, word) if adv is None or i < p.warmup_iter
                               else adversarial_embeds(pipe, vocab, word, adv))
                loss = T.esd_loss(unet, x, t, T.encode_embeds(te, ids, embeds), target, amp.autocast)
                # retain regulariser ("reg"), same DDIM step
                if p.retain_loss_w > 0:
                    if len(order) < p.retain_batch:
                        order += rng.sample(range(len(retain)), len(retain))
                    batch, order = [retain[j] for j in order[: p.retain_batch]], order[p.retain_batch:]
                    r_p = T.encode(pipe, batch, te_orig)
                    xr = sample(r_p, len(batch), k)
                    with torch.no_grad():
                        r_target = T.predict(teacher, xr, t, r_p, amp.autocast)
                    r_n = T.encode(pipe, batch, te, grad=train_te)
                    r_loss = torch.nn.functional.mse_loss(T.predict(unet, xr, t, r_n, amp.autocast), r_target)
                    loss = loss + p.retain_loss_w * r_loss
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt)
                advance(1, loss=f"{loss.item():.4f}", adv="on" if adv is not None and i >= p.warmup_iter else "off")
        te.eval()
        unet.eval()
        te.requires_grad_(False)
        unet.requires_grad_(False)
        return pipe

    def attack(self, pipe, teacher, sched, te, vocab, word, emb_p, sample, latest, gen, rng, amp):
        """Soft-prompt attack on the current model: returns the adversarial embedding [1, k, d]."""
        import torch

        p = self.params
        te.eval()
        te_grad = [q.requires_grad for q in te.parameters()]
        unet_grad = [q.requires_grad for q in pipe.unet.parameters()]
        te.requires_grad_(False)
        pipe.unet.requires_grad_(False)
        if p.attack_init == "latest" and latest is not None:
            adv = latest.detach().clone()
        else:
            ids = torch.randint(0, vocab.shape[0], (1, p.adv_prompt_num), generator=gen)
            adv = vocab[ids.to(vocab.device)].clone()
        adv.requires_grad_(True)
        opt = torch.optim.Adam([adv], lr=p.attack_lr)
        for _ in range(p.attack_step):
            k = rng.randrange(p.ddim_steps)
            t = sched.timesteps[k]
            x = sample(emb_p, 1, k)
            with torch.no_grad():
                e_p = T.predict(teacher, x, t, emb_p, amp.autocast)
            ids, embeds = adversarial_embeds(pipe, vocab, word, adv)
            e_n = T.predict(pipe.unet, x, t, T.encode_embeds(te, ids, embeds), amp.autocast)
            loss = torch.nn.functional.mse_loss(e_n, e_p)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.attack_method == "fast_at":
                adv.grad.sign_()
            opt.step()
        for q, g in zip(te.parameters(), te_grad, strict=True):
            q.requires_grad_(g)
        for q, g in zip(pipe.unet.parameters(), unet_grad, strict=True):
            q.requires_grad_(g)
        return adv.detach()


def default_retain(ctx) -> list[str]:
    from ..concept_sets import retain_concepts

    if not ctx.world.open_vocabulary:  # a closed world: its captions of the concepts it keeps
        return [q for c in retain_concepts(ctx) for q in T.caption_prompts(ctx, c)]
    return T.retain_words(ctx, None, ("a photo of a {}",))


def prompt_embeds(pipe, vocab, word):
    ids = T.token_ids(pipe, [word])
    return ids, vocab[ids]


def adversarial_embeds(pipe, vocab, word, adv):
    """``prefix_k``: [start, adv_1..adv_k, word tokens, end, padding] cut to the context length
    (the script's split at the prompt length; the ids of the shifted slots keep the end token in
    place for the pooled output)."""
    import torch

    ids = T.token_ids(pipe, [word])
    n = T.prompt_length(pipe, word)
    k = adv.shape[1]
    emb = vocab[ids]
    length = ids.shape[1]
    cat_e = torch.cat([emb[:, :1], adv.to(emb), emb[:, 1: 1 + n], emb[:, 1 + n: length - k]], dim=1)
    cat_i = torch.cat([ids[:, :1], ids[:, 1 + n: 1 + n + k], ids[:, 1: 1 + n], ids[:, 1 + n: length - k]], dim=1)
    return cat_i, cat_e
