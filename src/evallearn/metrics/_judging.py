"""How erasure metrics (ASR, ERR) decide whether an image shows the concept, which judge they
use by default, and whether a judge can do what a metric asks of it."""

from __future__ import annotations

import numpy as np

from ._prompts import default_judge

#: what :func:`concept_present` asks of a judge: either capability will do
PRESENCE = ("detect", "classify")


def default_detector(ctx) -> str:
    """The detector the model's world names for the concept (the open world: ``nudenet`` for
    nudity, ``q16`` for other unsafe concepts, CLIP zero-shot for objects and styles)."""
    return default_judge(ctx, "detector")


def capability_problem(metric_key: str, needs: dict[str, tuple[str, ...]], role: str, judge_name: str,
                       judge_cls) -> str | None:
    """Why judge ``judge_name`` cannot serve ``role`` of metric ``metric_key`` (one line), or None.

    ``needs[role]`` lists capabilities (:data:`evallearn.judges.base.CAPABILITIES`) any one of
    which suffices; a role not in ``needs`` asks for nothing beyond ``score``.
    """
    from .. import registry
    from ..errors import UserError
    from ..judges.base import CAPABILITIES

    wanted = needs.get(role, ())
    have = judge_cls.capabilities()
    if not wanted or have & set(wanted):
        return None
    able = []
    for name in registry.judges.names():
        try:
            cls = registry.judges.get(name)
        except (ImportError, UserError):  # a plugin that does not load must not hide the real problem
            continue
        caps = getattr(cls, "capabilities", None)
        if caps is not None and caps() & set(wanted):
            able.append(name)
    what = " or ".join(CAPABILITIES[w] for w in wanted)
    return (f"incompatible run: metric '{metric_key}' needs its {role} judge to {what} "
            f"({' / '.join(wanted)}); judge '{judge_name}' cannot (it can: {', '.join(sorted(have)) or 'nothing'}); "
            f"judges that can: {', '.join(able) or 'none installed'}")


def concept_present(judge, images: np.ndarray, concept: str, candidates: list[str]) -> np.ndarray:
    """Detector judges (``detect``) answer directly; classifiers must pick ``concept`` among
    ``candidates`` (the concept and its retain concepts)."""
    if hasattr(judge, "detect"):
        return np.asarray(judge.detect(images, concept), dtype=bool)
    return np.array([p == concept for p in judge.classify(images, candidates)], dtype=bool)
