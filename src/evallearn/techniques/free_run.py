"""Free run: evaluate a model exactly as it is.

The baseline and the "bring your own unlearned checkpoint" path: point ``model:`` at any
diffusers pipeline (hub id or folder), e.g. one erased by an external tool, and score it.
"""

from __future__ import annotations

from ..context import RunContext
from .base import Technique


class FreeRun(Technique):
    changes_model = False
    description = "No erasure: evaluate the model as loaded (baseline, or an externally unlearned checkpoint)."

    def apply(self, pipe, ctx: RunContext):
        return pipe
