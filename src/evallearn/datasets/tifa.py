"""TIFA questions (Hu et al., ICCV 2023, "TIFA: Accurate and Interpretable Text-to-Image
Faithfulness Evaluation with Question Answering").

TIFA v1.0: 4,081 captions with GPT-3-generated, filtered multiple-choice questions (question,
choices, answer, element type). Public home: ``https://github.com/Yushi-Hu/tifa`` files
``tifa_v1.0/tifa_v1.0_question_answers.json`` (one row per question, grouped here by caption id)
and ``tifa_v1.0_text_inputs.json``. A CSV with ``caption`` and a JSON ``qas`` column (the peer's
format) is read too. One record per caption; ``meta['qas']`` holds its questions.

The toy analogue asks, for each fully specified toy caption, which shape, colour and fill style
the image shows, with the toy words as choices.
"""

from __future__ import annotations

import json

from .base import DatasetParams, PromptDataset, PromptRecord, column


class TifaQuestions(PromptDataset):
    description = "TIFA v1.0 captions with their multiple-choice questions."
    paper = "Hu et al., ICCV 2023"
    home = "github.com/Yushi-Hu/tifa: tifa_v1.0/tifa_v1.0_question_answers.json"

    class Params(DatasetParams):
        pass

    def read(self, rows):
        cap = column(rows, ("caption", "prompt", "text"), self.name)
        qas_col = column(rows, ("qas",), self.name, required=False)
        out: dict[str, PromptRecord] = {}
        if qas_col:
            for row in rows:
                qas = row[qas_col]
                qas = json.loads(qas) if isinstance(qas, str) else qas
                qas = [{"question": q["question"], "choices": list(q.get("choices") or ["yes", "no"]),
                        "answer": q["answer"]} for q in qas]
                out[str(row[cap])] = PromptRecord(str(row[cap]), meta={"qas": qas})
            return list(out.values())
        idc = column(rows, ("id",), self.name, required=False)
        column(rows, ("question",), self.name)
        groups: dict[str, dict] = {}
        for row in rows:
            key = str(row[idc]) if idc else str(row[cap])
            g = groups.setdefault(key, {"caption": str(row[cap]), "qas": []})
            choices = row.get("choices") or ["yes", "no"]
            choices = json.loads(choices) if isinstance(choices, str) else list(choices)
            g["qas"].append({"question": str(row["question"]), "choices": choices, "answer": str(row["answer"]),
                             "type": row.get("element_type") or row.get("answer_type") or ""})
        return [PromptRecord(g["caption"], meta={"qas": g["qas"], "id": k}) for k, g in groups.items()]
