import numpy as np
import pytest
import torch
from contracts import TechniqueContract
from test_sld import REQS, assert_batch_invariant, assert_erased_and_kept, needs_toy, pipe, toy_erasure, toy_runs  # noqa: F401, F811

from evallearn.config import parse_config
from evallearn.generation import Generator
from evallearn.runner import prepare
from evallearn.techniques.saeuron import select_features


def test_feature_selection_matches_hand_computed_scores():
    # 1 prompt, 1 step, 4 features: target uses features 0 and 1, others use 1 and 2
    means = {"x": torch.tensor([[[4.0, 4.0, 0.0, 0.0]]]), "o": torch.tensor([[[0.0, 4.0, 4.0, 0.0]]])}
    feats, scale, thr = select_features(means, "x", percentile=50.0, multiplier=-2.0)
    # scores: x/Σx − o/Σo = [0.5, 0, −0.5, 0]; above the median (0) only feature 0
    assert feats[0].tolist() == [0]
    assert scale[0].tolist() == [-8.0] and thr[0].tolist() == [2.0]


def test_saeuron_ablates_in_the_block_and_is_batch_invariant(pipe, tiny_pipe_dir, tmp_path):  # noqa: F811
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\na red car\na blue cat\n")
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                        "output_dir": str(tmp_path), "sampler": {"steps": 2, "height": 32, "width": 32},
                        "technique": {"name": "saeuron", "params": {
                            "hookpoint": "up_blocks.0.attentions.1", "percentile": 90.0, "multiplier": -5.0,
                            "feature_prompts": 2, "train_prompts": str(prompts), "train_num_prompts": 4,
                            "train_steps": 20, "train_batch_size": 256}}})
    plan = prepare(cfg)
    tp = plan.technique.apply(pipe, plan.ctx)
    assert len(tp.features) == 2 and all(len(f) > 0 for f in tp.features)
    batch = assert_batch_invariant(Generator(tp))
    assert np.abs(batch.astype(int) - Generator(pipe).run_batch(REQS).astype(int)).mean() > 0.1


@needs_toy
@pytest.mark.slow
def test_saeuron_on_the_toy_world(toy_runs):  # noqa: F811
    # A partial erasure (docs/techniques/saeuron.md): on the shipped toy model, erasing 'cross', UA
    # 0.19 -> 0.38 (cross accuracy 0.81 -> 0.62), IRA 0.56 -> 0.52 (93 %). Multiplier -10 gave the same,
    # percentile 98 less (UA 0.31). The bar is the "erased concept down, others kept": UA up by
    # at least 3 of the 16 images, below the +0.2 the other inference-time techniques clear.
    values = toy_erasure({"name": "saeuron", "params": {"percentile": 99.0, "multiplier": -5.0,
                                                          "train_steps": 500}}, toy_runs)
    assert_erased_and_kept(values, min_gain=0.15)


class TestContract(TechniqueContract):
    name = "saeuron"
    params = {"hookpoint": "up_blocks.0.attentions.1", "percentile": 90.0, "multiplier": -5.0, "feature_prompts": 1,
              "train_num_prompts": 2, "train_steps": 2, "train_batch_size": 256}

    def technique_params(self, folder):
        (folder / "p.txt").write_text("a cat\na dog\n")
        return {**self.params, "train_prompts": str(folder / "p.txt")}
