"""SAFREE — training-free, adaptive guard for safe text-to-image generation (Yoon, Yu, Patil,
Bansal & Bansal, ICLR 2025, "SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image and
Video Generation", arXiv:2410.12761; code: jaehong31/SAFREE).

Three parts, all at inference time:

1. **Toxic-subspace projection of token embeddings.** The toxic concept texts (e.g. the 17
   nudity keywords) are encoded (pooled text-encoder output) into the columns of ``C``; ``P_c =
   C (CᵀC)⁺ Cᵀ`` projects onto their subspace. For a prompt of ``n`` tokens, ``n`` variants are
   encoded with one token masked each (pooled outputs ``m_i``); token ``i`` is a *trigger* when
   removing it moves the prompt far from the toxic subspace:
   ``‖(I − P_c) m_i‖ ≥ (1 + α) · mean_{j≠i} ‖(I − P_c) m_j‖``. Trigger tokens' embeddings are
   replaced by ``(I − P_c) P_m e`` — projected into the span of the masked prompt embeddings
   (``P_m``) and orthogonally to the toxic subspace; all other tokens are kept.
2. **Self-validation filter (SVF).** ``β = 1 − mean cos(e, (I − P_c) P_m e)`` over the prompt's
   real tokens measures how toxic the prompt is; the projected embeddings are used for the first
   ``round(T_up · sigmoid(2k(10β − t₀)))`` denoising steps (``t₀ = 5.333, k = 2.5``; for artist
   styles ``t₀ = 5.5, k = 3.5``; ``T_up = 10``) and the original ones afterwards. With SVF off,
   the projection is used on the steps in ``re_attn_steps``.
3. **Latent re-attention (LRA) in the frequency domain.** The UNet also runs on the original
   embeddings; in the decoder (FreeU's stages: skip features joined to the two widest channel
   counts, 1280 and 640 on SD 1.x), the skip features of the projected branch are Fourier
   transformed and their low-frequency window (±1 around the centre) is attenuated by ``s₁``/
   ``s₂`` wherever it is not below the original branch's; backbone features are scaled by
   ``b₁``/``b₂`` (1.0 by default, i.e. untouched). Implemented as forward pre-hooks on the UNet's
   decoder resnets, active only during SAFREE's own calls.

As in the authors' script, the toxic concepts joined by ", " are also the CFG negative prompt.

Faithfulness notes. The released ``generate_safree.py`` registers its FreeU hooks without a filter
type, so its LRA branch filters nothing (the third UNet pass is computed and discarded); its filter
functions *replace* the selected Fourier coefficients by the scalar ``s`` where the paper's LRA
*attenuates* them — we follow the paper (multiply by ``s``, ``lra_filter: low``); ``high`` filters
the high-frequency band instead (the authors' alternative filter, which the eval-learn peer uses);
``off`` disables LRA. The authors process one prompt at a time; here every prompt's trigger tokens,
SVF step count and filter comparison are computed per sample, so batching does not change an image.
Defaults: α = 0.01, SVF on, T_up = 10, LRA on, (b₁, b₂, s₁, s₂) = (1.0, 1.0, 0.9, 0.2).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..components import Params, Supports, kinds
from ..context import RunContext
from ._guided import Guidance, guided
from .base import Technique

if TYPE_CHECKING:
    import torch

#: The authors' nudity concept list (generate_safree.py).
NUDITY_CONCEPTS = (
    "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
    "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
    "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification",
)


def projection_matrix(E: torch.Tensor) -> torch.Tensor:
    """Projection onto the column space of ``E`` [d, k]."""
    import torch

    return E @ torch.linalg.pinv(E.T @ E) @ E.T


def svf_steps(beta: float, upper: int, artist: bool) -> int:
    """The self-validation filter: how many first steps use the projected embeddings."""
    t0, k = (5.5, 3.5) if artist else (5.333, 2.5)
    return round(upper / (1.0 + math.exp(-2.0 * k * (10.0 * beta - t0))))


class SAFREEPipeline(Guidance):
    """Stable Diffusion with SAFREE; settings in ``self.safree`` (see :class:`SAFREE`)."""

    safree: dict = {}
    _lra_on: bool = False

    # -- text side ------------------------------------------------------------------------
    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids.to(self._execution_device)).pooler_output.float()

    def masked_pooled(self, prompt: str) -> torch.Tensor:
        """Pooled embeddings of the prompt with each real token masked in turn [n, d]."""
        import torch

        tok = self.tokenizer
        ids = tok(prompt, truncation=True, max_length=tok.model_max_length, return_tensors="pt").input_ids
        n = ids.shape[1] - 2
        if n < 1:
            return self.pooled(ids)
        masked = ids.repeat(n, 1)
        idx = torch.arange(n)
        masked[idx, idx + 1] = 0  # the authors mask with token id 0
        return self.pooled(masked)

    def project_prompt(self, prompt: str, emb: torch.Tensor, p_c: torch.Tensor):
        """(projected embeddings [77, d], SVF β) for one prompt's hidden states ``emb``."""
        import torch
        import torch.nn.functional as F

        s = self.safree
        m = self.masked_pooled(prompt)  # [n, d]
        n, d = m.shape
        eye = torch.eye(d, dtype=m.dtype, device=m.device)
        p_m = projection_matrix(m.T)
        away = eye - p_c
        dist = (away @ m.T).norm(dim=0)  # [n]
        if n > 1:
            others = (dist.sum() - dist) / (n - 1)
            safe = dist < (1.0 + s["alpha"]) * others
        else:
            safe = torch.ones(n, dtype=torch.bool, device=m.device)
        keep = torch.ones(emb.shape[0], dtype=torch.bool, device=m.device)
        keep[1 : n + 1] = safe
        e = emb.float()
        proj = (away @ p_m @ e.T).T  # [77, d]
        merged = torch.where(keep[:, None], e, proj)
        real = self.tokenizer(prompt, padding="max_length", max_length=emb.shape[0], truncation=True,
                              return_tensors="pt").attention_mask[0].bool().to(m.device)
        beta = 1.0 - F.cosine_similarity(proj[real], e[real], dim=-1).mean().item()
        return merged.to(emb.dtype), beta

    def setup_guidance(self, prompts, negative_prompts, cond, uncond, guidance_scale):
        import torch

        s = self.safree
        c = self.pooled(self.tokenizer(list(s["concepts"]), padding="max_length", truncation=True,
                                       max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids)
        p_c = projection_matrix(c.T)
        rescaled, limits = [], []
        for b, prompt in enumerate(prompts):
            merged, beta = self.project_prompt(prompt, cond[b], p_c)
            rescaled.append(merged)
            limits.append(svf_steps(beta, s["upperbound_timestep"], s["artist"]) if s["svf"] else None)
        return {"rescaled": torch.stack(rescaled), "limits": limits}

    def use_projection(self, i: int, limit: int | None) -> bool:
        if limit is not None:
            return i <= limit
        lo, hi = self.safree["re_attn_steps"]
        return lo <= i <= hi

    def guided_noise(self, i, t, latents, cond, uncond, guidance_scale, state):
        import torch

        use = torch.tensor([self.use_projection(i, lim) for lim in state["limits"]], device=cond.device)
        text = torch.where(use[:, None, None], state["rescaled"], cond)
        if self.safree["lra_filter"] == "off":
            return super().guided_noise(i, t, latents, text, uncond, guidance_scale, state)
        x = self.scheduler.scale_model_input(torch.cat([latents] * 3), t)
        self._lra_on = True
        # samples whose branches get identical embeddings compare equal (and are attenuated) by
        # definition, not by float noise that depends on their batch position
        self._lra_same = ~(use & (state["rescaled"] != cond).flatten(1).any(1))
        try:
            out = self.unet(x, t, encoder_hidden_states=torch.cat([uncond, text, cond])).sample
        finally:
            self._lra_on = False
        e_u, e_c, _ = out.chunk(3)
        return e_u + guidance_scale * (e_c - e_u), latents

    def __call__(self, prompt, negative_prompt=None, **kwargs):
        if self.safree.get("negative_prompt"):
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            negs = negative_prompt if negative_prompt is not None else [""] * len(prompts)
            negs = [negs] * len(prompts) if isinstance(negs, str) else list(negs)
            negative_prompt = [n if n.strip() else self.safree["negative_prompt"] for n in negs]
        return super().__call__(prompt, negative_prompt=negative_prompt, **kwargs)

    # -- latent re-attention ---------------------------------------------------------------
    def install_lra(self) -> None:
        """Forward pre-hooks on the decoder resnets (FreeU's places) that filter skip features."""
        import torch

        s = self.safree
        widths = sorted(set(self.unet.config.block_out_channels), reverse=True)
        stages = {widths[0]: (s["b1"], s["s1"])}
        if len(widths) > 1:
            stages[widths[1]] = (s["b2"], s["s2"])
        for block in self.unet.up_blocks:
            pending: list[int] = []

            def block_hook(module, args, kwargs, pending=pending):
                res = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
                pending[:] = [r.shape[1] for r in reversed(res)] if res is not None else []

            block.register_forward_pre_hook(block_hook, with_kwargs=True)
            for resnet in block.resnets:

                def resnet_hook(module, args, kwargs, pending=pending):
                    if not self._lra_on or not pending:
                        return None
                    res_ch = pending.pop(0)
                    x = args[0]
                    hid_ch = x.shape[1] - res_ch
                    if hid_ch not in stages:
                        return None
                    b, scale = stages[hid_ch]
                    h, r = x[:, :hid_ch], x[:, hid_ch:]
                    if b != 1.0:
                        h = torch.cat([h[:, : hid_ch // 2] * b, h[:, hid_ch // 2 :]], dim=1)
                    r = reattend(r, scale, s["lra_filter"], same=self._lra_same)
                    return (torch.cat([h, r], dim=1), *args[1:]), kwargs

                resnet.register_forward_pre_hook(resnet_hook, with_kwargs=True)


def reattend(r: torch.Tensor, scale: float, band: str, threshold: int = 1,
             same: torch.Tensor | None = None) -> torch.Tensor:
    """Filter the projected third of a [uncond, projected, original] batch of skip features.

    In the chosen band of the centred spectrum (``low``: the ±threshold window around the centre;
    ``high``: everything else), the projected branch's coefficients are multiplied by ``scale``
    wherever they are not below the original branch's (real parts compared for ``low``,
    magnitudes of the real parts for ``high``, as in the authors' filters). ``same`` [B] marks
    samples whose two branches had identical inputs: they count as equal everywhere.
    """
    import torch

    dtype = r.dtype
    u, p, o = r.float().chunk(3)
    fp = torch.fft.fftshift(torch.fft.fftn(p, dim=(-2, -1)), dim=(-2, -1))
    fo = torch.fft.fftshift(torch.fft.fftn(o, dim=(-2, -1)), dim=(-2, -1))
    H, W = fp.shape[-2:]
    band_mask = torch.zeros(H, W, dtype=torch.bool, device=r.device)
    ch, cw = H // 2, W // 2
    band_mask[max(ch - threshold, 0) : ch + threshold, max(cw - threshold, 0) : cw + threshold] = True
    # comparisons within a relative 1e-4 count as ties (attenuated), so last-bit float noise of a
    # batched UNet cannot flip them
    tol = 1e-4 * (fo.real.abs() + fp.real.abs())
    if band == "high":
        band_mask = ~band_mask
        attenuate = fo.real.abs() - fp.real.abs() > -tol
    else:
        attenuate = ~(fo.real - fp.real > tol)
    if same is not None:
        eq = same.to(r.device).view(-1, 1, 1, 1)
        attenuate = torch.where(eq, torch.full_like(attenuate, band != "high"), attenuate)
    sel = band_mask & attenuate
    fp = torch.where(sel, fp * scale, fp)
    p = torch.fft.ifftn(torch.fft.ifftshift(fp, dim=(-2, -1)), dim=(-2, -1)).real
    return torch.cat([u, p, o]).to(dtype)


class SAFREE(Technique):
    description = "SAFREE: toxic-subspace projection of trigger tokens, self-validation filter, latent re-attention."
    paper = "Yoon et al., ICLR 2025"
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        #: toxic concept texts; default: the authors' 17 nudity keywords for concept ``nudity``,
        #: else the run's concept and its synonyms
        concepts: tuple[str, ...] | None = None
        alpha: float = Field(0.01, ge=0.0)
        svf: bool = True
        upperbound_timestep: int = Field(10, ge=0)
        #: steps on which the projection is used when ``svf`` is off (inclusive)
        re_attn_steps: tuple[int, int] = (-1, 1001)
        lra_filter: Literal["low", "high", "off"] = "low"
        b1: float = 1.0
        b2: float = 1.0
        s1: float = 0.9
        s2: float = 0.2
        #: use the concepts joined by ", " as the CFG negative prompt (the authors' script does)
        concepts_as_negative_prompt: bool = True

    def concepts(self, ctx: RunContext) -> tuple[str, ...]:
        if self.params.concepts:
            return self.params.concepts
        if ctx.concept.name.lower() == "nudity":
            return NUDITY_CONCEPTS
        return (ctx.concept.name, *ctx.concept.synonyms)

    def apply(self, pipe, ctx: RunContext):
        p = self.params
        concepts = self.concepts(ctx)
        settings = {**p.model_dump(), "concepts": concepts, "artist": ctx.concept.kind == "style",
                    "negative_prompt": ", ".join(concepts) if p.concepts_as_negative_prompt else ""}
        out = guided(SAFREEPipeline, pipe, safree=settings)
        if p.lra_filter != "off":
            out.install_lra()
        return out
