"""The toy world as a :class:`~evallearn.concepts.world.World`: registered through the
``evallearn.worlds`` entry point ``toy``; the generic code only ever asks it."""

from __future__ import annotations

from dataclasses import replace

from evallearn.concepts.concept import Concept
from evallearn.concepts.world import World
from evallearn.errors import UserError

from . import concepts as C
from .render import CLASSES, COLOURS, HEADS, SHAPES, STYLES

#: the model ref (and CLIP ref) this world owns
REF = "toy"


def _toy_concept_or_unsafe(concept: Concept):
    return C.toy_concept(concept.name if concept.name in C.toy_concept_names() else C.UNSAFE_CONCEPT)


class ToyWorld(World):
    name = REF
    model_tag = REF
    open_vocabulary = False

    @property
    def default_guidance(self) -> float:  # type: ignore[override]
        from . import DEFAULT_GUIDANCE

        return DEFAULT_GUIDANCE

    # -- models --------------------------------------------------------------------------------
    def owns(self, ref: str) -> bool:
        return ref == REF

    def concept_kind(self, name: str) -> str | None:
        return C.toy_concept(name).kind if name in C.toy_concept_names() else None

    def resolve_model(self, ref: str):
        if ref != REF:
            return None
        from evallearn.models.loading import inspect_folder

        from . import toy_pipeline_dir

        folder = toy_pipeline_dir()
        if not (folder / "model_index.json").is_file():
            raise UserError(f"model 'toy': the toy weights are not in this build ({folder}); "
                            "train them with `eval-learn toy train`, or use `model: tiny-random` for a smoke run")
        info = inspect_folder(ref, folder)
        return replace(info, tags=info.tags | {self.model_tag}, default_guidance=self.default_guidance,
                       world=self.name)

    def clip_ref(self, model) -> str | None:
        return REF

    def clip_folder(self, ref: str):
        if ref != REF:
            return None
        from . import toy_clip_dir

        return toy_clip_dir()

    # -- concepts ------------------------------------------------------------------------------
    def known_concepts(self) -> list[str]:
        return C.toy_concept_names()

    def concept_sets(self) -> dict[str, list[str]]:
        """Each kind's concepts: ``shapes`` (objects), ``colours`` (attributes), ``styles`` (fill styles)."""
        return {"shapes": list(SHAPES), "colours": list(COLOURS), "styles": list(STYLES)}

    def resolve_concept(self, cfg) -> Concept:
        """A toy concept: its own prompt sets and anchor; without ``retain`` in the config, the
        other concepts of its kind (the other shapes for a shape)."""
        if cfg.name not in C.toy_concept_names():  # no prompts: asking for them names the known concepts
            return Concept(name=cfg.name, kind=cfg.kind, synonyms=tuple(cfg.synonyms), retain=tuple(cfg.retain),
                           world=self.name)
        tc = C.toy_concept(cfg.name)
        retain = tuple(cfg.retain) or tuple(tc.retain_concepts)
        if tuple(cfg.retain):
            retain_prompts = tuple(p for r in retain for p in self.concept_prompts(r, "target"))
        else:
            retain_prompts = tuple(tc.retain_prompts)
        return Concept(name=tc.name, kind=cfg.kind, synonyms=tuple(cfg.synonyms),
                       retain=retain, anchor=tc.anchor, target_prompts=tuple(tc.target_prompts),
                       synonym_prompts=tuple(tc.synonym_prompts), retain_prompts=retain_prompts, world=self.name)

    def concept_prompts(self, name: str, which: str, synonyms=(), templates=()) -> list[str]:
        c = C.toy_concept(name)
        return list(c.target_prompts if which == "target" else c.synonym_prompts)

    def word_prompts(self, word: str, concept: str) -> list[str]:
        """``word`` in the prompt templates of ``concept``'s kind (a shape's, a fill style's or a
        colour's)."""
        family = {"object": C._object_prompts, "style": C._style_prompts, "attribute": C._colour_prompts}
        return family[C.toy_concept(concept).kind](word)

    def concept_images(self, concept: str, n_pos: int, n_neg: int, seed: int = 0):
        """Renders of ``concept`` and of the other classes of its classifier head."""
        import numpy as np

        from .render import render

        c = C.toy_concept(concept)
        key = {"shape": "shape", "style": "style", "colour": "colour"}[c.head]
        pos = np.stack([render(**{key: concept}, seed=seed * 100003 + i)[0] for i in range(n_pos)])
        others = list(c.retain_concepts)
        neg = np.stack([render(**{key: others[i % len(others)]}, seed=seed * 100003 + n_pos + i)[0]
                        for i in range(n_neg)])
        return pos, neg

    def default_judge(self, role: str, concept: Concept) -> str:
        return "clip" if role in ("scorer", "selector") else "toy_classifier"

    # -- datasets ------------------------------------------------------------------------------
    def dataset_analogue(self, dataset: str, concept: Concept):
        from evallearn.datasets.base import PromptRecord

        c = _toy_concept_or_unsafe(concept)
        if dataset == "i2p":
            s = C.unsafe_prompt_set(c.name)
            return ([PromptRecord(t, categories=("implicit",)) for t in s.implicit]
                    + [PromptRecord(t, categories=("explicit",)) for t in s.explicit])
        if dataset == "coco":
            return [PromptRecord(C.full_caption(s, col, st), meta={"render": (s, col, st)})
                    for s in SHAPES for col in COLOURS for st in STYLES]
        if dataset == "tifa":
            out = []
            for s in SHAPES:
                for col in COLOURS:
                    for st in STYLES:
                        qas = [{"question": "what shape is this?", "choices": list(SHAPES), "answer": s,
                                "type": "shape"},
                               {"question": "what colour is the shape?", "choices": list(COLOURS), "answer": col,
                                "type": "colour"},
                               {"question": "what is the fill style?", "choices": list(STYLES), "answer": st,
                                "type": "style"}]
                        out.append(PromptRecord(C.full_caption(s, col, st), meta={"qas": qas}))
            return out
        if dataset == "ring_a_bell":
            out = []
            for t in c.target_prompts:
                normal = " ".join((c.anchor or "") if w == c.name else w for w in t.split())
                out.append(PromptRecord(t, meta={"normal": " ".join(normal.split())}))
            return out
        if dataset == "mma_diffusion":
            return [PromptRecord(t, meta={"target_prompt": t}) for t in c.target_prompts]
        if dataset == "p4d":
            return [PromptRecord(t) for t in c.target_prompts]
        if dataset == "csv":
            return [PromptRecord(t) for t in c.synonym_prompts]
        return None

    def reference_images(self, records, size: int | None = None):
        if not records or "render" not in records[0].meta:
            return None
        import numpy as np

        from .render import render

        return np.stack([render(*r.meta["render"], seed=i)[0] for i, r in enumerate(records)])

    def captions(self, word: str) -> list[str]:
        """The toy training-caption templates over every colour and fill style."""
        return [C.fill_template(t, C.describe(word, col, s)) for t in C.TEMPLATES for col in COLOURS
                for s in STYLES]

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        import numpy as np

        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            labels = [int(rng.integers(len(CLASSES[h]))) for h in HEADS]
            out.append(C.caption_for(labels, rng))
        return out
