"""P4D — Prompting4Debugging (Chin, Jiang, Huang, Chen & Chiu, ICML 2024, "Prompting4Debugging:
Red-Teaming Text-to-Image Diffusion Models by Finding Problematic Prompts").

Finds a prompt ``P*`` for which the *unlearned* model predicts the same noise as the original
model does for the target prompt ``P``: minimise over soft prompt embeddings

    E_{t, eps} || eps_unlearned(z_t, t, W(P*)) - eps_original(z_t, t, W(P)) ||^2,

where ``z_0`` is the latent the original model generates from ``P`` (the run's sampler, the
prompt's seed) and ``z_t`` its noised version at a random timestep. As in the authors' code the
optimised embeddings are projected to their nearest vocabulary tokens (cosine, as in PEZ; Wen et
al., 2023) on every step, the loss is computed with the projected tokens and its gradient is
applied to the continuous embeddings (AdamW). ``variant: n`` optimises ``n_tokens`` free tokens;
``variant: k`` inserts a learnable token after every ``k`` tokens of the target prompt. The
prompt kept is the projected prompt with the lowest loss. Defaults are the paper's: 3,000
iterations, lr 0.1, weight decay 0.1, P4D-K with k = 3, P4D-N with 16 tokens.

On the base model itself (the "before" number) the objective is minimised by the target prompt,
which is returned unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..components import Params
from .base import Attack, decode, encode, token_ids, vocabulary_ids


class P4D(Attack):
    description = "P4D: optimise a prompt so the unlearned UNet's noise matches the original's."
    paper = "Chin et al., ICML 2024"
    needs_base = True

    class Params(Params):
        variant: Literal["k", "n"] = "k"
        k: int = Field(3, ge=1)
        n_tokens: int = Field(16, ge=1, le=75)
        iterations: int = Field(3000, ge=1)
        lr: float = 0.1
        weight_decay: float = 0.1
        #: words whose tokens the projection may use; () = the whole vocabulary
        token_pool: tuple[str, ...] = ()
        seed: int = 0

    def layout(self, tok, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids of the prompt body, mask of the learnable positions)."""
        p = self.params
        if p.variant == "n":
            return torch.zeros(p.n_tokens, dtype=torch.long), torch.ones(p.n_tokens, dtype=torch.bool)
        words = tok(target, add_special_tokens=False).input_ids
        ids, learn = [], []
        for i, w in enumerate(words):
            ids.append(w)
            learn.append(False)
            if (i + 1) % p.k == 0:
                ids.append(0)
                learn.append(True)
        cut = tok.model_max_length - 2
        return torch.tensor(ids[:cut], dtype=torch.long), torch.tensor(learn[:cut], dtype=torch.bool)

    @torch.no_grad()
    def reference_latent(self, base_pipe, target: str, ctx, seed: int):
        kw = {}
        if ctx is not None:
            kw = dict(num_inference_steps=ctx.config.sampler.steps, guidance_scale=ctx.config.sampler.guidance_scale,
                      height=ctx.height, width=ctx.width)
        g = torch.Generator("cpu").manual_seed(seed)
        return base_pipe(prompt=[target], generator=[g], output_type="latent", **kw).images

    def attack(self, pipe, targets, ctx=None, base_pipe=None):
        if base_pipe is None or base_pipe is pipe:
            return [(t, 0.0) for t in targets]
        p = self.params
        tok = pipe.tokenizer
        te, unet = pipe.text_encoder, pipe.unet
        table = te.get_input_embeddings().weight.detach().float()
        pool = vocabulary_ids(tok, p.token_pool).to(table.device)
        pool_norm = torch.nn.functional.normalize(table[pool], dim=-1)
        sched = base_pipe.scheduler
        flags = [(m, [q.requires_grad for q in m.parameters()]) for m in (te, unet)]
        for m, _ in flags:
            m.requires_grad_(False)
        gen = torch.Generator().manual_seed(p.seed)
        out = []
        try:
            for n, target in enumerate(targets):
                seed = (ctx.seed if ctx is not None else 0) + n
                z0 = self.reference_latent(base_pipe, target, ctx, seed).float()
                with torch.no_grad():
                    cond_ref = encode(base_pipe.text_encoder, token_ids(base_pipe, [target]))[0]
                body, learn = self.layout(tok, target)
                nl = int(learn.sum())
                init = pool[torch.randint(0, len(pool), (nl,), generator=gen)]
                soft = table[init].clone().requires_grad_(True)
                opt = torch.optim.AdamW([soft], lr=p.lr, weight_decay=p.weight_decay)
                best, best_ids = float("inf"), None
                for _ in range(p.iterations):
                    nearest = pool[(torch.nn.functional.normalize(soft, dim=-1) @ pool_norm.T).argmax(-1)]
                    proj = soft + (table[nearest] - soft).detach()  # forward projected, gradient to soft
                    ids_body = body.clone().to(table.device)
                    ids_body[learn] = nearest
                    full_ids = torch.full((1, tok.model_max_length), tok.pad_token_id or tok.eos_token_id,
                                          dtype=torch.long, device=table.device)
                    full_ids[0, 0] = tok.bos_token_id
                    full_ids[0, 1 : len(body) + 1] = ids_body
                    full_ids[0, len(body) + 1] = tok.eos_token_id
                    embeds = te.get_input_embeddings()(full_ids).detach().float().clone()
                    pos = torch.nonzero(learn).flatten() + 1
                    embeds[0, pos] = proj
                    cond = encode(te, full_ids, embeds.to(table.dtype))[0]
                    t = sched.timesteps[torch.randint(0, len(sched.timesteps), (1,), generator=gen)] \
                        if len(getattr(sched, "timesteps", [])) else torch.randint(0, 1000, (1,), generator=gen)
                    noise = torch.randn(z0.shape, generator=gen)
                    zt = sched.add_noise(z0, noise, t.long())
                    with torch.no_grad():
                        eps_ref = base_pipe.unet(zt, t, encoder_hidden_states=cond_ref).sample.float()
                    eps = unet(zt.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample.float()
                    loss = torch.nn.functional.mse_loss(eps, eps_ref)
                    if loss.item() < best:
                        best, best_ids = loss.item(), ids_body.detach().cpu().clone()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                out.append((decode(tok, best_ids), best))
        finally:
            for m, fl in flags:
                for q, f in zip(m.parameters(), fl, strict=True):
                    q.requires_grad_(f)
        return out
