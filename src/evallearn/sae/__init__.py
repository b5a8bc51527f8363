"""Sparse autoencoders on model activations: the model (:mod:`.model`), activation capture
(:mod:`.capture`), training (:mod:`.train`) and the ``eval-learn sae`` command (:mod:`.cli`).

Used by Concept Steerers (text-encoder activations) and SAeUron (UNet cross-attention block
activations)."""

from .model import TopKSAE

__all__ = ["TopKSAE"]
