"""The probes of "When Are Concepts Erased From Diffusion Models?" (Lu et al., NeurIPS 2025)."""

from .base import Probe, ProbeEnv, ProbeParams, ProbeResult, SelectingParams

__all__ = ["Probe", "ProbeEnv", "ProbeParams", "ProbeResult", "SelectingParams"]
