"""Task vectors (TV) as configured in "When Are Concepts Erased From Diffusion Models?" (Lu et
al., NeurIPS 2025, arXiv:2505.17013), after "Editing Models with Task Arithmetic" (Ilharco et
al., ICLR 2023, arXiv:2212.04089).

Fine-tune the UNet on the concept's own images (the same data and recipe as the paper's
gradient-ascent baseline, with the ordinary, descending diffusion loss), take the task vector
``τ = θ_ft − θ_0`` and subtract it: ``θ = θ_0 − α τ`` with ``α = 1.75`` by default. The
authors released no TV training script (their models were trained elsewhere; an experiment
notebook loads a checkpoint named ``english_springer_5000``, suggesting longer fine-tunes):
``updates`` is therefore a parameter, defaulting to the GA recipe's 20 optimiser updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from .._torch import no_grad
from ..components import Supports, kinds
from ..context import RunContext
from .base import Technique
from .gradient_ascent import FinetuneDataParams, finetune

if TYPE_CHECKING:
    import torch


class TaskVectorParams(FinetuneDataParams):
    #: negation strength α of θ_0 − α (θ_ft − θ_0)
    alpha: float = Field(1.75, ge=0)


class TaskVector(Technique):
    description = "Task-vector negation: fine-tune on the concept, subtract alpha x the weight difference."
    paper = "Ilharco et al., ICLR 2023; as configured in Lu et al., NeurIPS 2025"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = TaskVectorParams

    def apply(self, pipe, ctx: RunContext):
        base = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
        finetune(pipe, ctx, self.params, sign=1.0, label="task vector fine-tune")
        negate(pipe.unet, base, self.params.alpha)
        return pipe


@no_grad
def negate(module: torch.nn.Module, base: dict[str, torch.Tensor], alpha: float) -> None:
    """``θ ← θ_0 − α (θ − θ_0)`` for every floating-point tensor of ``module``."""
    state = module.state_dict()
    for k, v in state.items():
        if v.is_floating_point():
            v.copy_(base[k] - alpha * (v - base[k]))
