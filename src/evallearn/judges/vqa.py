"""A visual-question-answering model for TIFA (Hu et al., ICCV 2023), loaded through transformers.

``answer`` gives free-form answers; ``choose`` maps each to one of the question's choices as
TIFA's ``multiple_choice_vqa`` does: the choice whose Sentence-BERT embedding (mean-pooled,
L2-normalised; ``sentence-transformers/all-mpnet-base-v2`` in TIFA's ``mc_sbert.py``) is most
similar to the answer's. An answer that equals a choice (case-insensitive) is that choice, which
is what the embedding match returns too, so the matcher is only loaded when needed.

Supported model classes (by ``config.architectures``): BLIP VQA (``BlipForQuestionAnswering``,
e.g. ``Salesforce/blip-vqa-capfilt-large``, one of the VQA models TIFA evaluates; the question
as is), BLIP-2 (``Blip2ForConditionalGeneration``, with TIFA's BLIP-2 prompts, :func:`blip2_prompt`:
the multiple-choice one, listing the choices, whenever there are choices) and ViLT
(``ViltForQuestionAnswering``, answer = arg-max over its answer vocabulary). TIFA's default,
mPLUG-large, has no transformers port.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..components import Params
from ..errors import UserError
from ._hub import model_folder
from .base import Judge


@lru_cache(maxsize=2)
def _load_vqa(ref: str, device: str):
    import json

    import transformers

    folder = model_folder(ref, "vqa", "VQA model")
    arch = (json.loads((folder / "config.json").read_text()).get("architectures") or [""])[0]
    if arch not in ("BlipForQuestionAnswering", "Blip2ForConditionalGeneration", "ViltForQuestionAnswering"):
        raise UserError(f"judge 'vqa': {ref} is a {arch or 'model of unknown class'}; supported: BLIP VQA, "
                        "BLIP-2, ViLT VQA")
    try:
        model = getattr(transformers, arch).from_pretrained(str(folder), local_files_only=True).to(device).eval()
        processor = transformers.AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except OSError as exc:
        raise UserError(f"judge 'vqa': cannot load {folder}: {str(exc).splitlines()[0]}") from None
    return arch, model, processor


@lru_cache(maxsize=2)
def _load_matcher(ref: str, device: str):
    from transformers import AutoModel, AutoTokenizer

    folder = model_folder(ref, "vqa", "answer matcher (Sentence-BERT)")
    return AutoModel.from_pretrained(str(folder)).to(device).eval(), AutoTokenizer.from_pretrained(str(folder))


def blip2_prompt(question: str, choices: list[str] | None = None) -> str:
    """TIFA's BLIP-2 prompts (``tifa/vqa_models.py``): multiple-choice when there are choices."""
    if choices:
        return f"Answer the multiple-choice question. Question: {question} Choices: {', '.join(choices)} Answer:"
    return f"Answer the question. Question: {question} Answer:"


def normalise(text: str) -> str:
    return " ".join(str(text).lower().strip().rstrip(".").split())


class VQAJudge(Judge):
    description = "VQA model (BLIP / BLIP-2 / ViLT via transformers) with TIFA's SBERT choice matching."
    paper = "Hu et al., ICCV 2023 (TIFA)"

    class Params(Params):
        model: str = "Salesforce/blip-vqa-capfilt-large"
        #: Sentence-BERT model that maps a free-form answer to the nearest choice
        matcher: str = "sentence-transformers/all-mpnet-base-v2"
        max_new_tokens: int = 10
        batch_size: int = 16

    @classmethod
    def models_used(cls, params=None):
        p = params or cls.Params()
        return [p.model, p.matcher]

    def weights_fingerprint(self) -> str:
        """Content hashes of the VQA model's and the answer matcher's folders (they enter cache keys)."""
        from ..models.loading import folder_fingerprint

        refs = (self.params.model, self.params.matcher)
        return "+".join(folder_fingerprint(model_folder(ref, "vqa")) for ref in refs)

    def answer(self, images: np.ndarray, questions: list[str], choices: list[list[str]] | None = None) -> list[str]:
        """Free-form answers; ``choices`` (per question) only reach BLIP-2, in TIFA's prompt."""
        import torch

        arch, model, processor = _load_vqa(self.params.model, self.device)
        out: list[str] = []
        bs = self.params.batch_size
        with torch.no_grad():
            for i in range(0, len(images), bs):
                imgs, qs = list(images[i : i + bs]), list(questions[i : i + bs])
                if arch == "Blip2ForConditionalGeneration":
                    cs = choices[i : i + bs] if choices is not None else [None] * len(qs)
                    qs = [blip2_prompt(q, c) for q, c in zip(qs, cs, strict=True)]
                inputs = processor(images=imgs, text=qs, return_tensors="pt", padding=True).to(self.device)
                if arch == "ViltForQuestionAnswering":
                    ids = model(**inputs).logits.argmax(-1).tolist()
                    out += [model.config.id2label[k] for k in ids]
                else:
                    gen = model.generate(**inputs, max_new_tokens=self.params.max_new_tokens)
                    out += [t.strip() for t in processor.batch_decode(gen, skip_special_tokens=True)]
        return out

    def embed(self, texts: list[str]):
        import torch

        model, tok = _load_matcher(self.params.matcher, self.device)
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = model(**enc)[0]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def match(self, answer: str, choices: list[str]) -> str:
        for c in choices:
            if normalise(c) == normalise(answer):
                return c
        emb = self.embed([answer, *choices])
        return choices[int((emb[1:] @ emb[0]).argmax())]

    def choose(self, images: np.ndarray, questions: list[str], choices: list[list[str]]) -> tuple[list[str], list[str]]:
        """(free-form answers, multiple-choice answers), one per image/question."""
        free = self.answer(images, questions, choices)
        return free, [self.match(a, c) for a, c in zip(free, choices, strict=True)]

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        """1 where the answer to the yes/no question ``texts[i]`` is yes."""
        _, mc = self.choose(images, texts, [["yes", "no"]] * len(texts))
        return np.array([float(a == "yes") for a in mc])
