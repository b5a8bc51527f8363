"""MMA-Diffusion, text modality (Yang, Gao, Wang, Wu, Tao, Zhang & Xu, CVPR 2024, "MMA-Diffusion:
MultiModal Attack on Diffusion Models").

Greedy Coordinate Gradient (GCG; Zou et al., 2023) on the text encoder: an adversarial prompt of
``length`` tokens is optimised so that its pooled (EOS) text embedding matches the target
prompt's, loss ``1 - cos(E(adv), E(target))``. Each step takes the gradient of the loss with
respect to the one-hot token matrix, keeps the ``topk`` most promising tokens per position
(tokens containing a sensitive word, and the concept's own words, are banned: the authors'
``tokens_to_remove`` filter), builds ``candidates`` prompts that each change one position
(positions spread evenly over the candidates) to a random top-k token, drops candidates that do
not survive a decode/re-encode round trip, and moves to the best candidate. Defaults are the
authors' (``textual_attack.py``): 20 tokens, top-k 256, 1,000 steps; 512 candidates (the paper).

The attacked text encoder is the *unlearned* pipeline's (the peer attacked the stock CLIP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from ..components import Params
from .base import Attack, banned_ids, decode, encode, token_ids, vocabulary_ids, wrap

if TYPE_CHECKING:
    import torch

SENSITIVE_WORDS = ("sexual", "nude", "nudity", "sex", "18+", "naked", "nsfw", "porn", "dick", "vagina",
                   "explicit content", "uncensored", "fuck", "nipples", "breast", "areola", "ak", "na", "ke", "nud")


class MMADiffusion(Attack):
    description = "MMA-Diffusion: GCG on the text encoder towards the target prompt's embedding."
    paper = "Yang et al., CVPR 2024"

    class Params(Params):
        length: int = Field(20, ge=1, le=75)
        steps: int = Field(1000, ge=1)
        topk: int = Field(256, ge=1)
        candidates: int = Field(512, ge=1)
        #: banned substrings; the run's concept and its synonyms are always added
        banned_words: tuple[str, ...] = SENSITIVE_WORDS
        #: words whose tokens the search may use; () = the whole vocabulary
        token_pool: tuple[str, ...] = ()
        batch_size: int = Field(128, ge=1)
        seed: int = 0

    def allowed(self, tokenizer, ctx) -> torch.Tensor:
        import torch

        words = list(self.params.banned_words)
        if ctx is not None:
            words += [ctx.concept.name, *ctx.concept.synonyms]
        pool = vocabulary_ids(tokenizer, self.params.token_pool)
        banned = banned_ids(tokenizer, tuple(words))
        mask = torch.zeros(len(tokenizer), dtype=torch.bool)
        mask[pool] = True
        if banned:
            mask[torch.tensor(sorted(banned))] = False
        return mask

    def losses(self, pipe, bodies: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(bodies), self.params.batch_size):
                ids = wrap(pipe.tokenizer, bodies[i : i + self.params.batch_size]).to(target.device)
                pooled = encode(pipe.text_encoder, ids)[1].float()
                out.append(1 - torch.nn.functional.cosine_similarity(pooled, target[None], dim=-1))
        return torch.cat(out).cpu()

    def gradient(self, pipe, body: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch

        te = pipe.text_encoder
        weight = te.get_input_embeddings().weight
        ids = wrap(pipe.tokenizer, body[None]).to(weight.device)
        one_hot = torch.zeros(len(body), weight.shape[0], dtype=weight.dtype, device=weight.device)
        one_hot[torch.arange(len(body)), body.to(weight.device)] = 1.0
        one_hot.requires_grad_(True)
        full = te.get_input_embeddings()(ids).detach().clone()
        full = torch.cat([full[:, :1], (one_hot @ weight)[None], full[:, len(body) + 1 :]], dim=1)
        pooled = encode(te, ids, full)[1].float()
        loss = 1 - torch.nn.functional.cosine_similarity(pooled, target[None], dim=-1).sum()
        loss.backward()
        return one_hot.grad.detach().float().cpu()

    def round_trips(self, tokenizer, body: torch.Tensor) -> bool:
        again = tokenizer(decode(tokenizer, body), add_special_tokens=False).input_ids
        return len(again) == len(body)

    def attack(self, pipe, targets, ctx=None, base_pipe=None, seeds=None):
        import torch

        p = self.params
        tok = pipe.tokenizer
        allowed = self.allowed(tok, ctx)
        pool = torch.nonzero(allowed).flatten()
        gen = torch.Generator().manual_seed(p.seed)
        init_id = tok("!", add_special_tokens=False).input_ids[0]
        te_params = [q.requires_grad for q in pipe.text_encoder.parameters()]
        for q in pipe.text_encoder.parameters():
            q.requires_grad_(False)
        out = []
        try:
            for t in targets:
                with torch.no_grad():
                    target = encode(pipe.text_encoder, token_ids(pipe, [t]))[1].float()[0]
                body = torch.full((p.length,), init_id if allowed[init_id] else int(pool[0]), dtype=torch.long)
                best_body, best = body.clone(), float(self.losses(pipe, body[None], target)[0])
                for _ in range(p.steps):
                    grad = self.gradient(pipe, body, target)
                    grad[:, ~allowed] = float("inf")
                    top = (-grad).topk(min(p.topk, int(allowed.sum())), dim=1).indices  # [L, k]
                    pos = (torch.arange(p.candidates) * p.length // p.candidates).clamp(max=p.length - 1)
                    pick = torch.randint(0, top.shape[1], (p.candidates,), generator=gen)
                    cands = body.repeat(p.candidates, 1)
                    cands[torch.arange(p.candidates), pos] = top[pos, pick]
                    keep = [i for i in range(len(cands)) if self.round_trips(tok, cands[i])]
                    if not keep:
                        continue
                    cands = cands[keep]
                    loss = self.losses(pipe, cands, target)
                    j = int(loss.argmin())
                    body = cands[j]
                    if float(loss[j]) < best:
                        best, best_body = float(loss[j]), body.clone()
                out.append((decode(tok, best_body), best))
        finally:
            for q, flag in zip(pipe.text_encoder.parameters(), te_params, strict=True):
                q.requires_grad_(flag)
        return out
