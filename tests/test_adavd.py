import math

import numpy as np
import pytest
import torch
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract
from test_sld import REQS, assert_batch_invariant, pipe  # noqa: F401

from evallearn.config import parse_config
from evallearn.generation import Generator
from evallearn.runner import prepare
from evallearn.techniques.adavd import erased_component


def _plan(model, tmp_path, params):
    cfg = parse_config({"model": str(model), "concept": {"name": "cat", "kind": "object"},
                        "technique": {"name": "adavd", "params": params}, "output_dir": str(tmp_path)})
    return prepare(cfg)


def test_projection_against_hand_computed_values():
    t = torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1.0, 1.0]]])
    # plain projection: w = <t,p>/|t|^2 -> (0 at the start token), 3, 0.5
    era = erased_component(t, p, None)
    assert torch.allclose(era, torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]]))
    assert torch.allclose(((p - era)[0, 1:] * t[1:]).sum(-1), torch.zeros(2))  # orthogonal to t
    # adaptive shift: w scaled by c / (1 + exp(-a (cos - b))), cos(t1, p1) = 0.6, cos(t2, p2) = 1/sqrt2
    a, b, c = 10.0, 0.7, 2.0
    s1, s2 = c / (1 + math.exp(-a * (0.6 - b))), c / (1 + math.exp(-a * (1 / math.sqrt(2) - b)))
    era = erased_component(t, p, (a, b, c))
    assert torch.allclose(era, torch.tensor([[[0.0, 0.0], [3.0 * s1, 0.0], [0.0, s2]]]), atol=1e-5)


def test_target_spreads_the_last_word_and_changes_only_guided_values(pipe, tiny_pipe_dir, tmp_path):  # noqa: F811
    plan = _plan(tiny_pipe_dir, tmp_path, {"target": "red cat"})
    tp = plan.technique.apply(pipe, plan.ctx)
    emb = tp.embed_texts(["red cat"])
    spread = tp.target_embedding()
    ids = tp.tokenizer(["red cat"]).input_ids[0]  # [SOT, red, cat, EOT]
    assert torch.equal(spread[:, 0], emb[:, 0])
    assert torch.equal(spread[:, 1:], emb[:, len(ids) - 2 : len(ids) - 1].expand(-1, spread.shape[1] - 1, -1))
    # the base pipeline's processors are untouched after sampling, and the images change
    procs = dict(pipe.unet.attn_processors)
    batch = assert_batch_invariant(Generator(tp))
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == {k: type(v) for k, v in procs.items()}
    assert np.abs(batch.astype(int) - Generator(pipe).run_batch(REQS).astype(int)).mean() > 0.1


def test_defaults_are_the_authors_demo(tiny_pipe_dir, tmp_path):
    plan = _plan(tiny_pipe_dir, tmp_path, {})
    assert plan.technique.settings(plan.ctx) == {"target_text": "cat", "sigmoid": (100.0, 0.93, 2.0),
                                                 "decomp_timestep": 0}


@needs_toy
@pytest.mark.slow
@pytest.mark.parametrize("concept", [
    pytest.param("cross", marks=pytest.mark.xfail(strict=True, reason=(
        "measured: cross accuracy 1.00 -> 1.00 (IRA 0.917 -> 0.896); the shape is not removed by "
        "projecting the values off the concept word's value (docs/techniques/adavd.md)"))),
    "red",  # measured: 1.00 -> 0.00, IRA 0.844 -> 0.844
])
def test_adavd_on_the_toy_world(tmp_path, concept):
    v = erase_on_toy(tmp_path, "adavd", {}, concept=concept)
    assert v["acc_after"] <= 0.25, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "adavd"
