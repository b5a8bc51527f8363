"""STEREO (Srivatsan, Shamshad, Naseer, Patel & Nandakumar, "STEREO: A Two-Stage Framework for
Adversarially Robust Concept Erasing from Text-to-Image Diffusion Models", arXiv:2408.16807,
CVPR 2025; code: koushiksrivats/robust-concept-erasing, ``utils/stereo.py``, ``utils/apg.py``,
``train.py``).

**Stage 1, Search Thoroughly Enough (STE).** ``n_iterations`` rounds of: (a) erase the current
concept with ESD (partial DDIM trajectory of the model being trained, guidance 3; frozen copy of
the model *as it was at the start of the round* as teacher; target in the APG form
``ε_c − (g − 1)(ε_c − ε_∅)`` with ``g = negative_guidance``, which with APG's η = 1 and no
momentum or norm threshold is plain negative guidance); (b) attack the erased model with
textual inversion: a new token, initialised from ``initializer_token``, learned on gallery
images of the concept with the ordinary diffusion loss (AdamW, lr 5e-3, ``ti_steps`` steps,
object/style caption templates). The learned token is the concept erased in the next round;
the UNet carries over from round to round.

**Stage 2, Robustly Erase Once (REO).** From the *original* UNet, one ESD-style fine-tune
over the concept and the first ``num_adv_concepts`` adversarial tokens (stratified sampling),
towards a compositional target built on the frozen original model:

    ε* = ε_∅ + (−s − 1) · mean_k (ε_{c_k} − ε_∅) + (s − 1) · mean_a (ε_{anchor_a} − ε_∅)

with ``s = compositional_guidance_scale`` (one anchor prompt per iteration, drawn stratified
from ``anchor_prompts``). Only the UNet is kept; the learned tokens are discarded.

Defaults are the README's training command and the script's defaults: ``noxattn``, 2 rounds,
2 adversarial concepts, 200 ESD iterations per stage (lr 0.5e-5 in STE, 2e-5 in REO, AdamW),
negative guidance 2, compositional scale 2, textual inversion 3000 steps at 5e-3, 500 gallery
images. As in our ESD, ``x_t`` is queried at the DDIM timestep it has reached (the authors'
script queries timestep ``999 − 20k`` while its latent sits at ``981 − 20k``, 18 steps noisier).
Anchor prompts (the authors' per-concept
JSON) default to captions of the toy world's anchor on the toy model and must be given
elsewhere.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..components import Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..progress import progress_bar
from . import training as T
from .base import Technique

if TYPE_CHECKING:
    import torch

#: textual-inversion caption templates (object / style), as in the common TI recipes
TI_TEMPLATES = {
    "object": ("a photo of a {}", "a rendering of a {}", "a picture of a {}", "a close-up photo of a {}",
               "a good photo of a {}", "an image of a {}", "a drawing of a {}"),
    "style": ("a painting in the style of {}", "a rendering in the style of {}", "a picture in the style of {}",
              "an image in the style of {}", "a drawing in the style of {}"),
}


class STEREOParams(T.TrainingParams):
    train_method: Literal["noxattn", "xattn", "full"] = "noxattn"
    n_iterations: int = Field(2, ge=1)
    num_adv_concepts: int = Field(2, ge=0)
    iterations: int = Field(200, ge=1)
    ste_lr: float = Field(0.5e-5, gt=0)
    reo_lr: float = Field(2e-5, gt=0)
    negative_guidance: float = Field(2.0)
    compositional_guidance_scale: float = Field(2.0)
    start_guidance: float = Field(3.0, ge=0)
    ddim_steps: int = Field(50, ge=2)
    initializer_token: str = "object"
    learnable_property: Literal["object", "style"] = "object"
    ti_steps: int = Field(3000, ge=1)
    ti_lr: float = Field(5e-3, gt=0)
    #: gallery images of the concept for textual inversion, made by the base model
    num_gallery_images: int = Field(500, ge=1)
    #: prompts of the gallery; default: the concept's captions on the toy model, "a photo of a <concept>" else
    gallery_prompts: tuple[str, ...] | None = None
    gallery_steps: int = Field(50, ge=1)
    gallery_guidance: float = Field(7.5, ge=0)
    #: anchor concepts of REO; default: captions of the toy world's anchor ("shape") on the toy model
    anchor_prompts: tuple[str, ...] | None = None


class Token:
    """A learned word embedding standing in for a placeholder token inside prompt templates."""

    def __init__(self, pipe, init_word: str) -> None:
        ids = pipe.tokenizer(init_word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise UserError(f"technique 'stereo': initializer_token '{init_word}' is not a single CLIP token")
        self.init_word = init_word
        self.vector = T.word_embeddings(pipe.text_encoder).weight[ids[0]].detach().clone()

    def encode(self, pipe, templates, grad: bool = False) -> torch.Tensor:
        """Encode ``template.format(<token>)`` for each template ([N, 77, d])."""
        import torch

        ids = T.token_ids(pipe, [t.format(self.init_word) for t in templates])
        vocab = T.word_embeddings(pipe.text_encoder).weight.detach()
        embeds = vocab[ids].clone()
        for i, t in enumerate(templates):
            pos = 1 + T.prompt_length(pipe, t.split("{}")[0].strip()) if t.split("{}")[0].strip() else 1
            embeds[i, pos] = self.vector
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            return T.encode_embeds(pipe.text_encoder, ids, embeds)


class STEREO(Technique):
    description = "STEREO: iterated erase + textual-inversion attack, then one robust compositional erasure."
    paper = "Srivatsan et al., CVPR 2025"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = STEREOParams

    def apply(self, pipe, ctx: RunContext):
        p = self.params
        gen = T.seed_everything(ctx.seed)
        rng = random.Random(ctx.seed)
        anchors = list(p.anchor_prompts or ())
        if not anchors:
            anchor = T.default_anchor(ctx)
            if not anchor:
                raise UserError("technique 'stereo': set technique.params.anchor_prompts (REO's anchor concepts)")
            anchors = T.caption_prompts(ctx, anchor)
        pipe.text_encoder.requires_grad_(False)
        original = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
        amp = T.setup_execution(pipe, p)
        sched = T.ddim_scheduler(pipe, p.ddim_steps)
        null = T.encode(pipe, [""])
        shape = (1, *T.latent_shape(pipe, ctx.height, ctx.width))

        # Stage 1: STE
        gallery = self.gallery(pipe, ctx)
        tokens: list[Token] = []
        current = T.encode(pipe, [ctx.concept.name])
        for r in range(p.n_iterations):
            self.erase(pipe, sched, [current], null, shape, gen, rng, amp, p.ste_lr, f"STEREO STE {r + 1} erase",
                       compositional=None)
            token = Token(pipe, p.initializer_token)
            self.invert(pipe, token, gallery, gen, rng, amp, f"STEREO STE {r + 1} inversion")
            tokens.append(token)
            current = token.encode(pipe, ["{}"])

        # Stage 2: REO, from the original UNet
        pipe.unet.load_state_dict(original)
        erase = [T.encode(pipe, [ctx.concept.name])] + [t.encode(pipe, ["{}"]) for t in tokens[: p.num_adv_concepts]]
        anchor_embs = T.encode(pipe, anchors)
        self.erase(pipe, sched, erase, null, shape, gen, rng, amp, p.reo_lr, "STEREO REO", compositional=anchor_embs)
        pipe.unet.eval()
        pipe.unet.requires_grad_(False)
        return pipe

    def gallery(self, pipe, ctx: RunContext) -> torch.Tensor:
        p = self.params
        prompts = list(p.gallery_prompts or (T.caption_prompts(ctx, ctx.concept.name) if not ctx.world.open_vocabulary
                                             else [f"a photo of a {ctx.concept.name}"]))
        prompts = [prompts[i % len(prompts)] for i in range(p.num_gallery_images)]
        seeds = [ctx.seed * 1_000_003 + i for i in range(p.num_gallery_images)]
        return T.generate_latents(pipe, prompts, seeds, p.gallery_steps, p.gallery_guidance, ctx.height, ctx.width,
                                  label="STEREO gallery")

    def erase(self, pipe, sched, erase_embs, null, shape, gen, rng, amp, lr, label, compositional):
        """ESD-style fine-tune of the current UNet against a frozen copy of it (STE: one concept,
        negative guidance; REO: all concepts + anchors, compositional guidance)."""
        import torch

        p = self.params
        unet = pipe.unet
        teacher = T.frozen_copy(unet)
        params = T.select_params(unet, T.unet_param_filter(p.train_method))
        opt = torch.optim.AdamW(params, lr=lr)
        order_c = stratified(len(erase_embs), p.iterations, rng)
        order_a = stratified(compositional.shape[0], p.iterations, rng) if compositional is not None else None
        with progress_bar(label, p.iterations) as advance:
            for i in range(p.iterations):
                cond = erase_embs[order_c[i]]
                k = rng.randrange(1, p.ddim_steps - 1)
                t = sched.timesteps[k]
                unet.eval()
                x = T.ddim_sample_until(unet, sched, cond, null, p.start_guidance, T.randn(shape, gen, unet.device), k,
                                        amp.autocast)
                unet.train()
                with torch.no_grad():
                    e_0 = T.predict(teacher, x, t, null, amp.autocast)
                    if compositional is None:
                        e_c = T.predict(teacher, x, t, cond, amp.autocast)
                        g = p.negative_guidance
                        target = e_c - (g - 1) * (e_c - e_0)
                    else:
                        s = p.compositional_guidance_scale
                        negs = torch.stack([T.predict(teacher, x, t, e, amp.autocast) - e_0 for e in erase_embs])
                        e_a = T.predict(teacher, x, t, compositional[order_a[i]][None], amp.autocast)
                        target = e_0 + (-s - 1) * negs.mean(0) + (s - 1) * (e_a - e_0)
                loss = T.esd_loss(unet, x, t, cond, target, amp.autocast)
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt)
                advance(1, loss=f"{loss.item():.4f}")
        unet.eval()
        unet.requires_grad_(False)

    def invert(self, pipe, token: Token, gallery, gen, rng, amp, label):
        """Textual inversion of ``token`` on the gallery against the current (erased) model."""
        import torch

        p = self.params
        templates = TI_TEMPLATES[p.learnable_property]
        token.vector.requires_grad_(True)
        opt = torch.optim.AdamW([token.vector], lr=p.ti_lr)  # scale_lr with batch 1
        unet = pipe.unet
        with progress_bar(label, p.ti_steps) as advance:
            for _ in range(p.ti_steps):
                j = int(torch.randint(gallery.shape[0], (1,), generator=gen))
                x0 = gallery[j: j + 1].to(unet.device)
                xt, noise, t = T.add_noise(pipe, x0, gen, (0, 999))
                cond = token.encode(pipe, [rng.choice(templates)], grad=True)
                loss = torch.nn.functional.mse_loss(T.predict(unet, xt, t, cond, amp.autocast),
                                                  T.denoising_target(pipe, x0, noise, t))
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt)
                advance(1, loss=f"{loss.item():.4f}")
        token.vector = token.vector.detach()


def stratified(n: int, total: int, rng: random.Random) -> list[int]:
    """Each of ``n`` items ``total // n`` times, shuffled, plus a distinct random remainder."""
    out = list(range(n)) * (total // n)
    rng.shuffle(out)
    out += rng.sample(range(n), total - len(out))
    return out
