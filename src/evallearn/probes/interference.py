"""Alternative generations and interference probe of Lu et al. (2025, "When Are Concepts Erased
From Diffusion Models?", arXiv:2505.17013; ``InterferenceProbe`` in
kevinlu4588/WhenAreConceptsErased and the paper's analysis of "the model's alternative
generations that emerge in place of the erased concept").

Two questions, same sampler as the standard prompt:

* **alternatives** — what the erased model draws instead when prompted with the concept: the
  scoring judge's class distribution over the concept and its neighbours, beside the base
  model's. Destruction-style erasure tends to push the prompt onto another concept; guidance-
  based avoidance onto a generic image.
* **interference** — how the neighbours fare: each retain concept's own prompts on the erased
  and the base model, classified. The value is the erased model's accuracy on the neighbours
  (higher = less interference), with the base model's beside it.

The neighbours are ``concept.retain``, or else the paper's other concepts of the *same kind*.
The authors generate all 12 other concepts, objects and artists alike; here a neighbour is
scored by the same forced choice as the concept (its words and kind-specific template), which
cannot grade an artist's painting among object words, so cross-kind interference is not measured.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .base import Probe, ProbeEnv, ProbeParams, ProbeResult
from .prompts import concept_word


class Interference(Probe):
    description = "What the erased model draws instead of the concept, and its accuracy on neighbouring concepts."
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025"
    higher_is_better = True
    kind = "retention"
    needs_base = True

    class Params(ProbeParams):
        #: prompts per neighbouring concept (the authors: the first num_images rows of each)
        num_neighbour_prompts: int = 10

    def run(self, env: ProbeEnv) -> ProbeResult:
        cands = self.candidates()
        items = self.items()
        alternatives = {}
        for which in ("erased", "base"):
            labels = self.classify(env, self.standard_images(env, items, which))
            alternatives[which] = {c: Counter(labels).get(c, 0) / max(len(labels), 1) for c in cands}
        correct: dict[str, list[float]] = {"erased": [], "base": []}
        records: dict[str, list] = {"erased": [], "base": []}
        per_neighbour = {}
        for word in cands[1:]:
            neigh = [c for c in self._retain_names() if concept_word(self.ctx, c) == word] or [word]
            n_items = self.neighbour_items(neigh[0])
            acc = {}
            for which in ("erased", "base"):
                labels = self.classify(env, self.standard_images(env, n_items, which))
                ok = np.array([c == word for c in labels], dtype=float)
                acc[which] = float(ok.mean())
                correct[which].extend(ok.tolist())
                records[which].extend(self.samples(ok, labels, n_items, self.request_keys(n_items),
                                                   setting="neighbour", concept=word))
            per_neighbour[word] = acc
        base_acc = float(np.mean([v["base"] for v in per_neighbour.values()])) if per_neighbour else float("nan")
        return self.result(env, np.array(correct["erased"]), {
            "alternatives": alternatives, "neighbours": per_neighbour, "base_neighbour_accuracy": base_acc,
            "base": self.before(env, np.array(correct["base"]), records["base"])}, records["erased"])

    def _retain_names(self) -> list[str]:
        from ..metrics._prompts import retain_concepts
        from .prompts import wace_retain

        return retain_concepts(self.ctx) or wace_retain(self.ctx.concept.name)

    def neighbour_items(self, concept: str):
        from .prompts import probe_items

        return probe_items(self.ctx, self.params.num_neighbour_prompts, None, concept)
