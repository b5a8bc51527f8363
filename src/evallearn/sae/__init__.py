"""Sparse autoencoders on model activations: the model (:mod:`.model`), activation capture
(:mod:`.capture`), training (:mod:`.train`) and the ``eval-learn sae`` command (:mod:`.cli`).

Used by Concept Steerers and ItD (text-encoder activations) and SAeUron (UNet cross-attention
block activations)."""

__all__ = ["TopKSAE"]


def __getattr__(name: str):
    # the model is a torch module: imported on first use, so that the torch-free parts
    # (:mod:`.capture`'s helpers as techniques import them) load without torch
    if name == "TopKSAE":
        from .model import TopKSAE

        return TopKSAE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
