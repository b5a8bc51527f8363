"""A user's own prompts from a CSV (or JSON / Parquet) file: one prompt per row, optionally a seed.

The toy analogue is the run concept's synonym prompts (prompts that never name it).
"""

from __future__ import annotations

from .base import DatasetParams, PromptDataset, PromptRecord, as_seed, column


class CsvPrompts(PromptDataset):
    description = "Your own prompts from a CSV / JSON / Parquet file (column 'prompt', optional seed)."

    class Params(DatasetParams):
        prompt_column: str = "prompt"
        #: optional column with a per-prompt evaluation seed
        seed_column: str = "evaluation_seed"

    def read(self, rows):
        pc = column(rows, (self.params.prompt_column,), self.name)
        sc = column(rows, (self.params.seed_column,), self.name, required=False)
        where = f"dataset '{self.name}' ({self.params.source}) column '{sc}'"
        return [PromptRecord(str(r[pc]).strip(), as_seed(r.get(sc), f"{where} row {i + 1}") if sc else None)
                for i, r in enumerate(rows) if str(r[pc]).strip()]
