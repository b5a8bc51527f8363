"""TIFA — Text-to-Image Faithfulness evaluation with question Answering (Hu, Liu, Kasai, Wang,
Ostendorf, Krishna & Smith, ICCV 2023).

For each caption, its pre-generated multiple-choice questions are asked of the generated image;
the VQA model's free-form answer is mapped to the nearest choice (Sentence-BERT, as TIFA's
``multiple_choice_vqa``) and scored 1 if it is the expected answer. A caption's score is the
mean over its questions; TIFA is the mean over captions (TIFA's ``tifa_score_benchmark``), with
a bootstrap CI over captions. The peer scored free-form answers by exact string match, which is
not TIFA.

Judge ``auto``: the ``vqa`` judge; on the toy model the toy classifier answers the toy questions
(which shape / colour / fill style) by choosing among the choices.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pydantic import Field

from ..components import Params
from ._prompts import default_judge
from .base import JudgeRef, Metric, MetricResult, Sample, aggregate, request_meta


class TIFA(Metric):
    description = "TIFA: VQA accuracy on each caption's multiple-choice questions, averaged over captions."
    paper = "Hu et al., ICCV 2023"
    higher_is_better = True
    scores_each_image = True
    judge_needs = {"vqa": ("choose", "classify")}  # multiple-choice answers, or a pick among the choices

    class Params(Params):
        prompts: str = "tifa"
        prompts_params: dict = {}
        judge: str = "auto"
        judge_params: dict = {}
        max_prompts: int = Field(200, ge=1)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        #: one :class:`~.base.Sample` per caption with questions: the share answered correctly
        self.add_state("samples", list, reduce="cat")
        #: one :class:`~.base.Sample` per question: 1 if answered correctly, with its type
        self.add_state("questions", list, reduce="cat")

    def judge_refs(self):
        name = self.params.judge
        if name == "auto":
            name = default_judge(self.ctx, "vqa")
        return {"vqa": JudgeRef(name, dict(self.params.judge_params))}

    def records(self):
        from .. import registry
        from ..datasets.base import take

        cls = registry.datasets.get(self.params.prompts)
        ds = cls(cls.parse_params(self.params.prompts_params, f"metric '{self.name}' prompts_params"))
        return take(ds.load(self.ctx), self.params.max_prompts)

    def requests(self):
        return [self.ctx.request(r.prompt, self.ctx.seed + i) for i, r in enumerate(self.records())]

    def update(self, requests, images, judges):
        judge = judges["vqa"]
        recs = {r.prompt: r for r in self.records()}
        img_rep, questions, choices, answers, owner, types = [], [], [], [], [], []
        for k, req in enumerate(requests):
            for qa in recs[req.prompt].meta["qas"]:
                img_rep.append(images[k])
                questions.append(qa["question"])
                choices.append(list(qa["choices"]))
                answers.append(qa["answer"])
                owner.append(k)
                types.append(qa.get("type", ""))
        imgs = np.stack(img_rep) if img_rep else images[:0]
        if hasattr(judge, "choose"):
            _, mc = judge.choose(imgs, questions, choices)
        else:  # a classifier answers by picking among the choices
            mc = [judge.classify(imgs[i : i + 1], choices[i])[0] for i in range(len(questions))]
        correct = defaultdict(list)
        for k, q, a, m, t in zip(owner, questions, answers, mc, types, strict=True):
            correct[k].append(float(str(m).strip().lower() == str(a).strip().lower()))
            self.state["questions"].append(Sample(correct[k][-1], request_meta(requests[k], question=q, type=t)))
        self.state["samples"] += [Sample(float(np.mean(correct[k])), request_meta(r, questions=len(correct[k])))
                                  for k, r in enumerate(requests) if correct[k]]
        self.record_judges(judges)

    def compute(self) -> MetricResult:
        per_type = aggregate(self.state["questions"], group_by="type").group_values()
        by_type = {t or "untyped": v for t, v in per_type.items()}
        return self.result(self.state["samples"], {"accuracy_by_type": by_type})
