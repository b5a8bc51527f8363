"""A k-sparse (TopK) autoencoder (Makhzani & Frey 2013; Gao et al. 2024, "Scaling and evaluating
sparse autoencoders"), the architecture both Concept Steerers (kim-dahye/steerers,
``training/k_sparse_autoencoder.py``) and SAeUron (cywinski/SAeUron, ``SAE/sae.py``) train:

    z = TopK_k(ReLU(W_enc (x − b_dec) + b_enc)),      x̂ = W_dec z + b_dec

with unit-norm decoder rows. Saved as a folder: ``config.json`` + ``sae.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class SAEConfig:
    d_in: int
    n_latents: int
    k: int
    #: where the activations came from, e.g. ``text_encoder.text_model.encoder.layers.9``
    hookpoint: str = ""
    #: free-form provenance (model, prompts, steps) written next to the weights
    meta: dict | None = None


class TopKSAE(nn.Module):
    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.encoder = nn.Linear(cfg.d_in, cfg.n_latents)
        self.W_dec = nn.Parameter(self.encoder.weight.detach().clone())  # [n_latents, d_in], tied init
        self.encoder.bias.data.zero_()
        self.normalize_decoder()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(W_enc (x − b_dec) + b_enc): every latent, before the top-k."""
        return torch.relu(self.encoder(x.to(self.b_dec.dtype) - self.b_dec))

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Dense codes with only the ``k`` largest kept per row."""
        pre = self.pre_acts(x)
        vals, idx = pre.topk(k or self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / "sae.safetensors"))
        (folder / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> TopKSAE:
        from safetensors.torch import load_file

        from ..errors import UserError

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "sae.safetensors").is_file():
            raise UserError(f"sae: {folder} is not an SAE folder (needs config.json and sae.safetensors; "
                            "train one with 'eval-learn sae train')")
        sae = cls(SAEConfig(**json.loads((folder / "config.json").read_text())))
        sae.load_state_dict(load_file(str(folder / "sae.safetensors")))
        return sae.to(device).eval()
