import numpy as np
import pytest
import torch
from contracts import TechniqueContract
from test_sld import REQS, assert_batch_invariant, assert_erased_and_kept, needs_toy, pipe, toy_erasure, toy_runs  # noqa: F401, F811

from evallearn.config import parse_config
from evallearn.generation import Generator
from evallearn.runner import prepare
from evallearn.techniques.safree import projection_matrix, reattend, svf_steps


def _plan(model, tmp_path, params):
    cfg = parse_config({"model": str(model), "concept": {"name": "cat", "synonyms": ["kitten"]},
                        "technique": {"name": "safree", "params": params}, "output_dir": str(tmp_path)})
    return prepare(cfg)


def test_projection_and_self_validation_filter():
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert torch.allclose(projection_matrix(E), torch.diag(torch.tensor([1.0, 1.0, 0.0])))
    # the SVF's step count: sigmoid(2k(10β − t0)) · T_up, rounded
    assert svf_steps(0.0, 10, artist=False) == 0
    assert svf_steps(0.5333, 10, artist=False) == 5
    assert svf_steps(1.0, 10, artist=False) == 10


def test_lra_attenuates_only_the_projected_branch_where_it_is_not_below_the_original():
    g = torch.Generator().manual_seed(0)
    u, p, o = (torch.randn(1, 2, 4, 4, generator=g) for _ in range(3))
    out = reattend(torch.cat([u, p, o]), 0.5, "low")
    assert torch.equal(out[0], u[0]) and torch.equal(out[2], o[0])
    assert not torch.allclose(out[1], p[0])
    same = reattend(torch.cat([u, p, p]), 1.0, "low")  # scale 1 = identity
    assert torch.allclose(same[1], p[0], atol=1e-5)


def test_trigger_tokens_are_projected_and_generation_is_batch_invariant(pipe, tiny_pipe_dir, tmp_path):  # noqa: F811
    plan = _plan(tiny_pipe_dir, tmp_path, {"alpha": 0.0})
    tp = plan.technique.apply(pipe, plan.ctx)
    c = tp.pooled(tp.tokenizer(["cat", "kitten"], padding="max_length", max_length=77, return_tensors="pt").input_ids)
    emb = tp.embed_texts(["a photo of a cat"])[0]
    merged, beta = tp.project_prompt("a photo of a cat", emb, projection_matrix(c.T))
    changed = (merged - emb).abs().sum(-1) > 1e-6
    assert 0 < int(changed.sum()) < 5 and not changed[0] and not changed[6:].any()  # only some word tokens
    assert 0.0 <= beta <= 2.0
    batch = assert_batch_invariant(Generator(tp))
    assert np.abs(batch.astype(int) - Generator(pipe).run_batch(REQS).astype(int)).mean() > 0.1


@needs_toy
@pytest.mark.slow
def test_safree_on_the_toy_world(toy_runs):  # noqa: F811
    assert_erased_and_kept(toy_erasure({"name": "safree", "params": {}}, toy_runs))


class TestContract(TechniqueContract):
    name = "safree"
