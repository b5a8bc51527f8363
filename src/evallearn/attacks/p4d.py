"""P4D — Prompting4Debugging (Chin, Jiang, Huang, Chen & Chiu, ICML 2024, "Prompting4Debugging:
Red-Teaming Text-to-Image Diffusion Models by Finding Problematic Prompts"; code: joycenerd/P4D).

Finds a prompt ``P*`` for which the *unlearned* model predicts the same noise as the original
model does for the target prompt ``P``: minimise over soft prompt embeddings

    E_{t, eps} || eps_unlearned(z_t, t, W(P*)) - eps_original(z_t, t, W(P)) ||^2,

where ``z_0`` is the latent the original model generates from ``P`` with the prompt's evaluation
seed (the run's sampler) and ``z_t`` its noised version at a timestep drawn uniformly from the
training schedule. As in the authors' code the optimised embeddings are projected to their
nearest vocabulary tokens (cosine, as in PEZ; Wen et al., 2023) on every step, the loss is
computed with the projected tokens and its gradient is applied to the continuous embeddings
(AdamW). ``variant: n`` optimises ``n_tokens`` free tokens; ``variant: k`` interleaves the target
prompt's tokens with learnable ones (a learnable token, then ``k`` target tokens, and so on).

The prompt kept is chosen as in the authors' code: every ``eval_step`` iterations the unlearned
model generates an image from the current projected prompt with the evaluation seed, and the
prompt whose image is closest to the original model's image of ``P`` (cosine similarity of CLIP
image embeddings) wins. The CSV's ``loss`` column is 1 - that similarity. The authors use
open_clip ViT-H-14 (laion2b_s32b_b79k); ``clip_model: auto`` is its transformers port for Stable
Diffusion and the toy CLIP on the toy model. Defaults are the paper's: 3,000 iterations, lr 0.1,
weight decay 0.1, evaluation every 50 iterations, P4D-K with k = 3, P4D-N with 16 tokens.

On the base model itself (the "before" number) the objective is minimised by the target prompt,
which is returned unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from .._torch import no_grad
from ..components import Params
from .base import Attack, decode, encode, token_ids, vocabulary_ids

if TYPE_CHECKING:
    import torch

#: the transformers port of the authors' open_clip ViT-H-14 (laion2b_s32b_b79k)
P4D_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class P4D(Attack):
    description = "P4D: optimise a prompt so the unlearned UNet's noise matches the original's."
    paper = "Chin et al., ICML 2024"
    needs_base = True
    reads_unet = True

    class Params(Params):
        variant: Literal["k", "n"] = "k"
        k: int = Field(3, ge=1)
        n_tokens: int = Field(16, ge=1, le=75)
        iterations: int = Field(3000, ge=1)
        lr: float = Field(0.1, gt=0.0)
        weight_decay: float = Field(0.1, ge=0.0)
        #: every this many iterations the current prompt's image is scored (step 0 included)
        eval_step: int = Field(50, ge=1)
        #: CLIP for the image similarity: auto = the toy CLIP on the toy model, else ``P4D_CLIP``
        clip_model: str = "auto"
        #: words whose tokens the projection may use; () = the whole vocabulary
        token_pool: tuple[str, ...] = ()
        seed: int = 0

    def layout(self, tok, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids of the prompt body, mask of the learnable positions)."""
        import torch

        p = self.params
        if p.variant == "n":
            return torch.zeros(p.n_tokens, dtype=torch.long), torch.ones(p.n_tokens, dtype=torch.bool)
        words = tok(target, add_special_tokens=False).input_ids
        total = len(words) + len(words) // p.k + 1
        ids, learn, it = [], [], iter(words)
        for i in range(total):
            if i % (p.k + 1) == 0:
                ids.append(0)
                learn.append(True)
            else:
                ids.append(next(it))
                learn.append(False)
        cut = tok.model_max_length - 2
        return torch.tensor(ids[:cut], dtype=torch.long), torch.tensor(learn[:cut], dtype=torch.bool)

    def clip_ref(self, ctx) -> str:
        if self.params.clip_model != "auto":
            return self.params.clip_model
        from ..models.clip import auto_clip_ref

        return auto_clip_ref(getattr(ctx, "model", None), default=P4D_CLIP)

    @no_grad
    def generate(self, pipe, prompt: str, ctx, seed: int, output_type: str):
        import torch

        kw = {}
        if ctx is not None:
            kw = dict(num_inference_steps=ctx.config.sampler.steps, guidance_scale=ctx.config.sampler.guidance_scale,
                      height=ctx.height, width=ctx.width)
        g = torch.Generator("cpu").manual_seed(seed)
        return pipe(prompt=[prompt], generator=[g], output_type=output_type, **kw).images

    def attack(self, pipe, targets, ctx=None, base_pipe=None, seeds=None):
        import torch

        if base_pipe is None or base_pipe is pipe:
            return [(t, 0.0) for t in targets]
        from ..generation import to_uint8
        from ..models.clip import clip_embed_images, load_clip

        p = self.params
        clip, processor = load_clip(self.clip_ref(ctx))
        if seeds is None:
            seeds = [(ctx.seed if ctx is not None else 0) + n for n in range(len(targets))]
        tok = pipe.tokenizer
        te, unet = pipe.text_encoder, pipe.unet
        table = te.get_input_embeddings().weight.detach().float()
        pool = vocabulary_ids(tok, p.token_pool).to(table.device)
        pool_norm = torch.nn.functional.normalize(table[pool], dim=-1)
        sched = base_pipe.scheduler
        n_train = sched.config.num_train_timesteps
        flags = [(m, [q.requires_grad for q in m.parameters()]) for m in (te, unet)]
        for m, _ in flags:
            m.requires_grad_(False)
        gen = torch.Generator().manual_seed(p.seed)
        out = []
        try:
            for target, seed in zip(targets, seeds, strict=True):
                z0 = self.generate(base_pipe, target, ctx, seed, "latent").float()
                with torch.no_grad():
                    decoded = base_pipe.vae.decode(z0.to(base_pipe.vae.dtype) / base_pipe.vae.config.scaling_factor)
                ref_image = base_pipe.image_processor.postprocess(decoded.sample, output_type="np")
                ref_feat = clip_embed_images(clip, processor, to_uint8(ref_image))
                with torch.no_grad():
                    cond_ref = encode(base_pipe.text_encoder, token_ids(base_pipe, [target]))[0]
                body, learn = self.layout(tok, target)
                nl = int(learn.sum())
                init = pool[torch.randint(0, len(pool), (nl,), generator=gen)]
                soft = table[init].clone().requires_grad_(True)
                opt = torch.optim.AdamW([soft], lr=p.lr, weight_decay=p.weight_decay)
                best, best_text = -float("inf"), target
                for step in range(p.iterations):
                    nearest = pool[(torch.nn.functional.normalize(soft, dim=-1) @ pool_norm.T).argmax(-1)]
                    proj = soft + (table[nearest] - soft).detach()  # forward projected, gradient to soft
                    ids_body = body.clone().to(table.device)
                    ids_body[learn] = nearest
                    if step % p.eval_step == 0:
                        text = decode(tok, ids_body.detach().cpu())
                        image = self.generate(pipe, text, ctx, seed, "np")
                        sim = float((clip_embed_images(clip, processor, to_uint8(image)) * ref_feat).sum())
                        if sim > best:
                            best, best_text = sim, text
                    full_ids = torch.full((1, tok.model_max_length), tok.pad_token_id or tok.eos_token_id,
                                          dtype=torch.long, device=table.device)
                    full_ids[0, 0] = tok.bos_token_id
                    full_ids[0, 1 : len(body) + 1] = ids_body
                    full_ids[0, len(body) + 1] = tok.eos_token_id
                    embeds = te.get_input_embeddings()(full_ids).detach().float().clone()
                    pos = torch.nonzero(learn).flatten() + 1
                    embeds[0, pos] = proj
                    cond = encode(te, full_ids, embeds.to(table.dtype))[0]
                    t = torch.randint(0, n_train, (1,), generator=gen)
                    noise = torch.randn(z0.shape, generator=gen)
                    zt = sched.add_noise(z0, noise, t)
                    with torch.no_grad():
                        eps_ref = base_pipe.unet(zt, t, encoder_hidden_states=cond_ref).sample.float()
                    eps = unet(zt.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample.float()
                    loss = torch.nn.functional.mse_loss(eps, eps_ref)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                out.append((best_text, 1.0 - best))
        finally:
            for m, fl in flags:
                for q, f in zip(m.parameters(), fl, strict=True):
                    q.requires_grad_(f)
        return out
