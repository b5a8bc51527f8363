"""The probe suite end to end on the toy world: a UCE-erased toy model, what each probe recovers
(with CIs), and the verdict. Skipped until the toy world's weights are installed."""

import pytest

from evallearn_toy import BELOW_BAR, meets_ground_truth_bar

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not meets_ground_truth_bar(("shape",)),
                                 reason=BELOW_BAR)]


def test_uce_erased_circle_probed(tmp_path):
    import torch

    from evallearn.config import parse_config
    from evallearn.runner import run

    torch.set_num_threads(2)
    small = {"num_prompts": 12}
    cfg = parse_config({
        "name": "probe-toy", "model": "toy", "seed": 0, "output_dir": str(tmp_path),
        "technique": {"name": "uce", "params": {"guide": "shape"}},
        "concept": {"name": "circle", "kind": "object", "retain": ["square", "triangle", "cross"]},
        "metrics": ["ua", "ira"],
        "probes": [{"name": "standard_prompt", "params": small},
                   {"name": "noise_based", "params": {**small, "etas": [1.0, 1.5, 1.85],
                                                      "variance_scales": [1.0, 1.04]}},
                   {"name": "classifier_guidance", "params": {**small, "scales": [10.0, 50.0], "etas": [0.0],
                                                              "train_num_positives": 300, "train_num_negatives": 900,
                                                              "train_epochs": 6, "train_batch_size": 32}},
                   {"name": "interference", "params": {"num_prompts": 12, "num_neighbour_prompts": 8}}],
        "sampler": {"scheduler": "ddim", "steps": 20, "guidance_scale": 6.0, "batch_size": 32}})
    res = run(cfg)
    pr = {k: e["after"] for k, e in res["probes"]["results"].items()}
    std, base = pr["standard_prompt"], res["probes"]["results"]["standard_prompt"]["before"]
    # the erasure holds under the standard prompt: far below the base model's rate
    assert base["value"] >= 0.8
    assert std["value"] < base["value"] - 0.3
    for key in ("noise_based", "classifier_guidance"):
        r = pr[key]
        assert r["n"] == 12 and r["ci_low"] <= r["value"] <= r["ci_high"]
        assert len(r["details"]["settings"]) >= 2
        assert r["judges"]["selector"] != r["judges"]["classifier"]
    # neighbours are kept (interference probe on the other shapes)
    assert pr["interference"]["value"] >= 0.85 * pr["interference"]["details"]["base_neighbour_accuracy"]
    v = res["probes"]["verdict"]
    assert v["label"] in ("guidance-based avoidance", "destruction-based removal (consistent with)")
    print({k: (round(r["value"], 3), round(r["ci_low"], 3), round(r["ci_high"], 3)) for k, r in pr.items()}, v["label"])
