"""An outside package that plugs into eval-learn through entry points only (used by tests)."""

import torch
import typer

from evallearn.components import Params, Supports, kinds
from evallearn.techniques.base import Technique


class ScaleAttention(Technique):
    """Scales every cross-attention value projection: a deterministic, cheap weight edit."""

    description = "test plugin: scale attn2.to_v by a factor"
    edits = ("unet",)

    class Params(Params):
        factor: float = 0.5

    def apply(self, pipe, ctx):
        with torch.no_grad():
            for name, module in pipe.unet.named_modules():
                if name.endswith("attn2.to_v"):
                    module.weight.mul_(self.params.factor)
        return pipe


class NudityOnly(Technique):
    description = "test plugin: declares it only handles nudity concepts on SD 2"
    supports = Supports(concept_kinds=kinds("nudity"), model_tags=kinds("sd2"))

    def apply(self, pipe, ctx):
        return pipe


# -- command-line commands (group ``evallearn.cli``) ----------------------------------------------

hello_app = typer.Typer(help="test plugin: a command group")


@hello_app.command()
def greet(name: str = "world") -> None:
    """Print a greeting."""
    print(f"hello, {name}")


@hello_app.command()
def count(n: int) -> None:
    """Print 1..N."""
    print(" ".join(str(i) for i in range(1, n + 1)))


def shout(word: str) -> None:
    """test plugin: a plain function as a command."""
    print(word.upper())
