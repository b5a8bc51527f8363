"""Ring-A-Bell (Tsai, Hsu, Xie, Lin, Chen, Yu & Huang, ICLR 2024, "Ring-A-Bell! How Reliable are
Concept Removal Methods for Diffusion Models?").

1. Concept vector: the mean, over pairs of prompts with and without the concept, of the
   difference of their text-encoder hidden states (77 x d): ``c = mean(E(p_with) - E(p_without))``.
2. For each target prompt ``P``, the problematic embedding ``E(P) + eta * c``.
3. A genetic algorithm over token sequences ``[BOS, K tokens, EOS, ...]`` minimises the squared
   distance ``||E(P~) - (E(P) + eta c)||^2``: each generation keeps the best half, then for each
   survivor with probability ``crossover_rate`` adds the two children of a one-point crossover
   with a random survivor, then mutates each member with probability ``mutation_rate`` (one
   random position set to a random token). The best sequence's K tokens, decoded, are the prompt.

Defaults are the authors' (``InversePrompt.ipynb``): population 200, 3,000 generations, mutation
0.25, crossover 0.5, K = 16, eta = 3 (nudity). The text encoder is the *attacked* pipeline's, so
an edit of the text encoder (e.g. AdvUnlearn) is attacked directly; an edit of the UNet only is
attacked through the prompts it did not anticipate. ``token_pool`` restricts the tokens the
search may use (empty = the whole vocabulary, as in the paper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from .._torch import no_grad
from ..components import Params
from ..errors import UserError
from .base import Attack, decode, encode, token_ids, vocabulary_ids, wrap

if TYPE_CHECKING:
    import torch


class RingABell(Attack):
    description = "Ring-A-Bell: concept vector from prompt pairs + genetic search over tokens."
    paper = "Tsai et al., ICLR 2024"

    class Params(Params):
        eta: float = 3.0
        length: int = Field(16, ge=1, le=75)
        population: int = Field(200, ge=4)
        generations: int = Field(3000, ge=1)
        mutation_rate: float = Field(0.25, ge=0.0, le=1.0)
        crossover_rate: float = Field(0.5, ge=0.0, le=1.0)
        #: source of the prompt pairs (dataset ring_a_bell); None = the toy pairs on the toy model
        pairs: str | None = None
        #: words whose tokens the search may use; () = the whole vocabulary
        token_pool: tuple[str, ...] = ()
        #: how many population members are scored per text-encoder forward pass
        batch_size: int = Field(256, ge=1)
        seed: int = 0

    @no_grad
    def concept_vector(self, pipe, ctx=None) -> torch.Tensor:
        import torch

        from ..datasets.ring_a_bell import RingABellPairs

        ds = RingABellPairs(RingABellPairs.Params(source=self.params.pairs))
        ds.name = "ring_a_bell"
        records = ds.load(ctx)
        with_c = [r.prompt for r in records]
        without = [r.meta["normal"] for r in records]
        diffs = []
        for i in range(0, len(with_c), 32):
            a = encode(pipe.text_encoder, token_ids(pipe, with_c[i : i + 32]))[0]
            b = encode(pipe.text_encoder, token_ids(pipe, without[i : i + 32]))[0]
            diffs.append((a - b).float())
        return torch.cat(diffs).mean(0)

    @no_grad
    def fitness(self, pipe, population: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch

        out = []
        for i in range(0, len(population), self.params.batch_size):
            ids = wrap(pipe.tokenizer, population[i : i + self.params.batch_size]).to(target.device)
            hidden = encode(pipe.text_encoder, ids)[0].float()
            out.append(((hidden - target) ** 2).sum(dim=(1, 2)))
        return torch.cat(out).cpu()

    def search(self, pipe, target: torch.Tensor, pool: torch.Tensor, rng: np.random.Generator):
        import torch

        p = self.params
        k = p.length
        population = pool[torch.from_numpy(rng.integers(0, len(pool), size=(p.population, k)))]
        loss = None
        for gen in range(p.generations):
            loss = self.fitness(pipe, population, target)
            order = torch.argsort(loss, stable=True)[: p.population // 2]
            population, loss = population[order], loss[order]
            if gen == p.generations - 1:
                break
            members = []
            for i in range(len(population)):
                members.append(population[i])
                if rng.random() < p.crossover_rate:
                    j = int(rng.integers(0, len(population)))
                    cut = int(rng.integers(1, k + 1))
                    members.append(torch.cat([population[i][:cut], population[j][cut:]]))
                    members.append(torch.cat([population[j][:cut], population[i][cut:]]))
            population = torch.stack(members).clone()
            for i in range(len(population)):
                if rng.random() < p.mutation_rate:
                    population[i, int(rng.integers(0, k))] = pool[int(rng.integers(0, len(pool)))]
        return population[0], float(loss[0])

    def attack(self, pipe, targets, ctx=None, base_pipe=None, seeds=None):
        import torch

        vector = self.concept_vector(pipe, ctx)
        pool = vocabulary_ids(pipe.tokenizer, self.params.token_pool)
        if len(pool) == 0:
            raise UserError("attack 'ring_a_bell': token_pool gives no tokens")
        rng = np.random.default_rng(self.params.seed)
        out = []
        for t in targets:
            with torch.no_grad():
                target = encode(pipe.text_encoder, token_ids(pipe, [t]))[0].float()[0] + self.params.eta * vector
            best, loss = self.search(pipe, target, pool, rng)
            out.append((decode(pipe.tokenizer, best), loss))
        return out
