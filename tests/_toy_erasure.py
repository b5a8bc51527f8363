"""Shared toy-world erasure check for the technique tests: erase a shape ("cross" unless told) with a
technique through the runner and read UA / IRA before and after (skipped unless the shipped toy model
meets its shape bar).

The shape tests erase "cross", the toy world's designated unsafe shape: the neutral anchor "shape" the
closed-form edits map onto is itself drawn as a circle about half the time, so mapping "circle" onto it
cannot take circle accuracy near zero (UCE on "circle": 0.875 -> 0.5; on "cross": 0.875 -> 0.125).
"""

from __future__ import annotations

import pytest

from evallearn_toy import BELOW_BAR, meets_ground_truth_bar


def toy_ready() -> bool:
    return meets_ground_truth_bar(("shape",))


needs_toy = pytest.mark.skipif(not toy_ready(), reason=BELOW_BAR)


def erase_on_toy(tmp_path, technique: str, params: dict, concept: str = "cross", guidance: float | None = 6.0,
                 **concept_keys) -> dict:
    """UA / IRA before and after; ``guidance`` None = the toy model's own (4); ``concept_keys``
    (synonyms, retain) go into the config's concept."""
    from evallearn.config import parse_config
    from evallearn.runner import run

    cfg = parse_config({
        "name": f"{technique}-{concept}", "model": "toy",
        "technique": {"name": technique, "params": params},
        "concept": {"name": concept, "kind": "object", **concept_keys},
        "metrics": [{"name": "ua", "params": {"max_prompts": 16}}, {"name": "ira", "params": {"max_prompts": 16}}],
        "seed": 0, "sampler": {"steps": 20, "guidance_scale": guidance, "batch_size": 32},
        "output_dir": str(tmp_path)})
    res = run(cfg)
    ua, ira = res["metrics"]["ua"], res["metrics"]["ira"]
    values = {"acc_before": 1 - ua["before"]["value"], "acc_after": 1 - ua["after"]["value"],
              "ira_before": ira["before"]["value"], "ira_after": ira["after"]["value"]}
    print(f"toy erasure {technique} on {concept}: {values}")  # shown by pytest -rA
    return values
