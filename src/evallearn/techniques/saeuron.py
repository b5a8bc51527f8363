"""SAeUron — interpretable concept unlearning with sparse autoencoders (Cywiński & Deja, ICML 2025,
"SAeUron: Interpretable Concept Unlearning in Diffusion Models with Sparse Autoencoders",
arXiv:2501.18052; code: cywinski/SAeUron).

A TopK SAE (expansion 16, k = 32) is trained on the activations of one UNet cross-attention
transformer block (``up_blocks.1.attentions.1`` for objects, ``up_blocks.1.attentions.2`` for
styles on SD 1.5), every spatial position being one row. Concept features are selected per
denoising step ``t`` from the SAE codes of generations of the concept and of the other concepts
(the spatial mean per image): with ``μ_c(t)`` the mean code of concept ``c``,

    score_i(t) = μ_x,i(t) / Σ_j μ_x,j(t)  −  μ_o,i(t) / Σ_j μ_o,j(t)      (x: target, o: all others)

and the features above the ``percentile``-th percentile of the scores are the concept's at step
``t``. During sampling a forward hook encodes the block output at every position (both halves of
classifier-free guidance), and on the positions where a selected feature fires above its mean over
all concepts, multiplies it by ``γ · μ_x,i(t)`` (γ = ``multiplier`` < 0), decodes, and adds back the
SAE's reconstruction error so only the ablated features change (the authors'
``SAEMaskedUnlearningHook``). Defaults are the authors' style-unlearning script's: percentile
99.999, γ = −1 (their object runs sweep both per class).

The SAE comes from ``sae`` (``eval-learn sae train --site unet``) or is trained at apply time on
generations of ``train_prompts`` (toy model: toy captions) and cached; the feature statistics are
computed at apply time from ``feature_prompts`` generations of the concept and of
``concept.retain`` with the run's sampler (steps must match: step ``t`` of a generation uses the
statistics of step ``t``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from .._torch import no_grad
from ..components import Params, Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..sae.capture import first, replace_first, unet_activations, unet_module
from ._guided import guided
from .base import Technique

if TYPE_CHECKING:
    import torch

    from ..sae.model import TopKSAE

TEMPLATES = ("a photo of a {}", "an image of a {}", "a picture of a {}", "a {}")


class SAeUronPipeline:
    """Stable Diffusion with SAE feature ablation on one UNet block (settings set by :class:`SAeUron`);
    mixed into ``StableDiffusionPipeline`` on use (:func:`evallearn.techniques._guided.guided`)."""

    hookpoint: str = ""
    sae: TopKSAE | None = None
    features: list[torch.Tensor] = []  # per step: selected feature indices
    scaling: list[torch.Tensor] = []  # per step: γ · μ_x for those features
    thresholds: list[torch.Tensor] = []  # per step: mean activation over all concepts
    preserve_error: bool = True

    @no_grad
    def ablate(self, h: torch.Tensor, step: int) -> torch.Tensor:
        import torch

        t = min(step, len(self.features) - 1)
        B, C, H, W = h.shape
        x = h.permute(0, 2, 3, 1).reshape(-1, C).float()
        sae = self.sae
        z = sae.encode(x.to(sae.b_dec.device))
        recon = sae.decode(z)
        idx = self.features[t].to(z.device)
        if len(idx):
            sel = z[:, idx]
            mask = sel > self.thresholds[t].to(z.device)
            z[:, idx] = torch.where(mask, sel * self.scaling[t].to(z.device), sel)
        out = sae.decode(z)
        if self.preserve_error:
            out = out + (x.to(out.device) - recon)
        return out.to(h).reshape(B, H, W, C).permute(0, 3, 1, 2)

    def __call__(self, *args, **kwargs):
        module = unet_module(self.unet, self.hookpoint)
        step = {"i": 0}

        def hook(m, inputs, output):
            h = self.ablate(first(output), step["i"])
            step["i"] += 1
            return replace_first(output, h)

        handle = module.register_forward_hook(hook)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            handle.remove()


class SAeUron(Technique):
    description = "SAeUron: ablate a concept's sparse-autoencoder features in a UNet cross-attention block."
    paper = "Cywiński & Deja, ICML 2025"
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        #: folder of a trained SAE (``eval-learn sae train --site unet``); none = train one now
        sae: str | None = None
        #: UNet block; none = ``up_blocks.1.attentions.2`` for styles, ``up_blocks.1.attentions.1`` otherwise
        hookpoint: str | None = None
        percentile: float = Field(99.999, gt=0.0, lt=100.0)
        multiplier: float = -1.0
        preserve_error: bool = True
        #: prompt templates with ``{}`` for feature selection (toy model: the toy concept prompts)
        templates: tuple[str, ...] = TEMPLATES
        feature_prompts: int = Field(16, ge=1)
        #: prompt file for training the SAE when ``sae`` is not set (toy model: toy captions)
        train_prompts: str | None = None
        train_num_prompts: int = Field(256, ge=1)
        train_steps: int = Field(2000, ge=1)
        train_batch_size: int = Field(4096, ge=1)
        expansion: int = Field(16, ge=1)
        k: int = Field(32, ge=1)
        lr: float = Field(4e-4, gt=0)

    def hookpoint(self, ctx: RunContext) -> str:
        if self.params.hookpoint:
            return self.params.hookpoint
        return "up_blocks.1.attentions.2" if ctx.concept.kind == "style" else "up_blocks.1.attentions.1"

    def concept_prompts(self, ctx: RunContext, name: str) -> list[str]:
        n = self.params.feature_prompts
        if not ctx.world.open_vocabulary:  # a closed world's own prompt set of the concept
            prompts = ctx.world.concept_prompts(name, "target")
            step = max(1, len(prompts) // n)
            return prompts[::step][:n]
        templates = self.params.templates
        return [templates[i % len(templates)].format(name) for i in range(n)]

    def load_sae(self, pipe, ctx: RunContext, hookpoint: str) -> TopKSAE:
        p = self.params
        if p.sae:
            from ..sae.model import TopKSAE

            sae = TopKSAE.load(p.sae)
        else:
            from ..sae.cached import ensure_sae

            sae, _ = ensure_sae(ctx, self, hookpoint, lambda: train_unet_sae(pipe, ctx, hookpoint, p),
                                reads_sampler=True)
        return sae

    @no_grad
    def feature_tables(self, pipe, ctx: RunContext, hookpoint: str, sae: TopKSAE):
        s = ctx.config.sampler
        names = [ctx.concept.name, *ctx.concept.retain]
        if len(names) < 2:
            raise UserError("technique 'saeuron': feature selection compares the concept with others; "
                            "set concept.retain")
        means = {}
        for c, name in enumerate(names):
            prompts = self.concept_prompts(ctx, name)
            acts = unet_activations(pipe, prompts, hookpoint, s.steps, s.guidance_scale,
                                    seeds=[ctx.seed * 7919 + 1000 * c + i for i in range(len(prompts))],
                                    height=ctx.height, width=ctx.width)  # [P, T, HW, C]
            P, T, HW, C = acts.shape
            z = sae.encode(acts.reshape(-1, C).to(sae.b_dec.device)).reshape(P, T, HW, -1).mean(2)
            means[name] = z  # [P, T, F]
        return select_features(means, ctx.concept.name, self.params.percentile, self.params.multiplier)

    def apply(self, pipe, ctx: RunContext):
        hookpoint = self.hookpoint(ctx)
        unet_module(pipe.unet, hookpoint)  # fail early on a bad name
        sae = self.load_sae(pipe, ctx, hookpoint).to(pipe.unet.device)
        features, scaling, thresholds = self.feature_tables(pipe, ctx, hookpoint, sae)
        out = guided(SAeUronPipeline, pipe)
        out.hookpoint, out.sae, out.preserve_error = hookpoint, sae, self.params.preserve_error
        out.features, out.scaling, out.thresholds = features, scaling, thresholds
        return out


def select_features(means: dict[str, torch.Tensor], target: str, percentile: float, multiplier: float,
                    eps: float = 1e-8):
    """Per step: (selected feature indices, γ·μ_target of them, mean over all concepts of them)."""
    import torch

    steps = means[target].shape[1]
    features, scaling, thresholds = [], [], []
    for t in range(steps):
        mu_x = means[target][:, t].float().mean(0)
        mu_o = torch.cat([m[:, t] for n, m in means.items() if n != target]).float().mean(0)
        scores = mu_x / (mu_x.sum() + eps) - mu_o / (mu_o.sum() + eps)
        thr = torch.quantile(scores, percentile / 100.0)
        idx = torch.where(scores > thr)[0]
        features.append(idx)
        scaling.append(mu_x[idx] * multiplier)
        thresholds.append(torch.stack([m[:, t, idx].float().mean(0) for m in means.values()]).mean(0))
    return features, scaling, thresholds


def train_unet_sae(pipe, ctx: RunContext, hookpoint: str, p) -> TopKSAE:
    from ..sae.data import read_prompts
    from ..sae.train import train_sae

    if p.train_prompts:
        prompts = read_prompts(p.train_prompts)[: p.train_num_prompts]
    elif (prompts := ctx.world.corpus(p.train_num_prompts, seed=ctx.seed)) is not None:
        pass  # the world's own training-caption distribution
    else:
        raise UserError("technique 'saeuron': set 'sae' (a trained SAE folder) or 'train_prompts' "
                        "(a prompt file) to train one")
    s = ctx.config.sampler
    acts = unet_activations(pipe, prompts, hookpoint, s.steps, s.guidance_scale,
                            seeds=[ctx.seed + i for i in range(len(prompts))], height=ctx.height, width=ctx.width)
    return train_sae(acts.reshape(-1, acts.shape[-1]), expansion=p.expansion, k=p.k, steps=p.train_steps,
                     batch_size=p.train_batch_size, lr=p.lr, seed=ctx.seed, hookpoint=f"unet.{hookpoint}",
                     meta={"model": ctx.config.model, "n_prompts": len(prompts), "steps": s.steps})
