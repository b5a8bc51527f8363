"""Where metrics get their concept prompts: from the run's resolved concept and its world
(:mod:`evallearn.concept_sets`)."""

from __future__ import annotations

from ..concept_sets import concept_prompts, default_judge, retain_concepts  # noqa: F401  (for the metrics)
from ..concepts.world import DEFAULT_TEMPLATES  # noqa: F401
