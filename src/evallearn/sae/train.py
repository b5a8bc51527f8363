"""Training a :class:`~evallearn.sae.model.TopKSAE` on a matrix of activations.

The objective of Gao et al. (2024), which both reference implementations use: mean squared
reconstruction error plus an auxiliary-k term (``auxk_coef`` · the error of reconstructing the
residual from the ``auxk`` largest *dead* latents, those that have not fired for ``dead_after``
training rows), Adam, decoder rows renormalised after every step, ``b_dec`` initialised at the
activations' mean. Defaults follow the authors' runs (k = 32, lr 4e-4, expansion 4 for Concept
Steerers and 16 for SAeUron); the number of steps and the batch are the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._torch import no_grad
from .model import SAEConfig, TopKSAE

if TYPE_CHECKING:
    import torch


def train_sae(acts: torch.Tensor, expansion: int = 4, k: int = 32, steps: int = 2000, batch_size: int = 4096,
              lr: float = 4e-4, auxk: int | None = 32, auxk_coef: float = 1 / 32, dead_after: int = 1_000_000,
              seed: int = 0, hookpoint: str = "", meta: dict | None = None,
              log: Callable[[int, float], None] | None = None, n_latents: int | None = None) -> TopKSAE:
    """Train on ``acts`` [N, d] (rows are sampled with replacement, seeded). ``n_latents``, when
    given, sets the dictionary size instead of ``expansion`` · d."""
    import torch

    with torch.enable_grad():
        return _train(acts.float(), n_latents or expansion * acts.shape[-1], k, steps, batch_size, lr, auxk,
                      auxk_coef, dead_after, seed, hookpoint, meta, log)


def _train(acts, n_latents, k, steps, batch_size, lr, auxk, auxk_coef, dead_after, seed, hookpoint, meta, log):
    import torch

    n, d = acts.shape
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=d, n_latents=n_latents, k=min(k, n_latents), hookpoint=hookpoint, meta=meta)
    sae = TopKSAE(cfg).to(acts.device)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(sae.n_latents, device=acts.device)
    total_var = (acts - acts.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    for step in range(steps):
        x = acts[torch.randint(n, (min(batch_size, n),), generator=gen).to(acts.device)]
        pre = sae.pre_acts(x)
        vals, idx = pre.topk(sae.cfg.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals)
        recon = sae.decode(z)
        err = x - recon
        loss = err.pow(2).sum(-1).mean() / total_var
        fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=acts.device)
        fired.scatter_(0, idx[vals > 0].flatten(), True)
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + len(x))
        dead = since_fired >= dead_after
        if auxk and dead.any():
            k_aux = min(auxk, int(dead.sum()))
            pre_dead = pre.masked_fill(~dead, 0.0)
            a_vals, a_idx = pre_dead.topk(k_aux, dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, a_idx, a_vals)
            aux_err = (err.detach() - z_aux @ sae.W_dec).pow(2).sum(-1).mean() / total_var
            loss = loss + auxk_coef * aux_err
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.normalize_decoder()
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(step, float(loss.detach()))
    return sae.eval()


@no_grad
def fraction_of_variance_unexplained(sae: TopKSAE, acts: torch.Tensor) -> float:
    acts = acts.float()
    err = (acts - sae(acts)).pow(2).sum(-1).mean()
    return float(err / (acts - acts.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12))
