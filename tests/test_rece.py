import copy

import pytest
import torch
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques._closed_form import cross_attention_projections, embed
from evallearn.techniques.rece import RECE, regenerating_embeddings


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    return load_pipeline(resolve_model(str(tiny_pipe_dir)))


def _plan(tiny_pipe_dir, tmp_path, name, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog", "car"]},
                        "technique": {"name": name, "params": params}, "output_dir": str(tmp_path)})
    return prepare(cfg)


def _weights(p):
    return [q.weight.detach().double().clone() for q in cross_attention_projections(p.unet)]


def test_rece_erases_the_embeddings_that_regenerate_the_concept_after_uce(pipe, tiny_pipe_dir, tmp_path):
    original = _weights(pipe)
    c = embed(pipe, ["cat"])
    uce = copy.deepcopy(pipe)
    uce_plan = _plan(tiny_pipe_dir, tmp_path, "uce", {})
    uce_plan.technique.apply(uce, uce_plan.ctx)
    plan = _plan(tiny_pipe_dir, tmp_path, "rece", {"epochs": 2})
    rece = copy.deepcopy(pipe)
    plan.technique.apply(rece, plan.ctx)
    # after UCE, a derived embedding still reproduces the original "cat" outputs closely ...
    _, err_uce = regenerating_embeddings(_weights(uce), original, c, 0.1)
    # ... after RECE the best such embedding reproduces them much worse
    _, err_rece = regenerating_embeddings(_weights(rece), original, c, 0.1)
    assert err_rece[0] > 1.2 * err_uce[0]
    assert len(plan.technique.history) == 2
    # the first epoch starts from the UCE weights: same derivation error as computed here
    assert plan.technique.history[0][0] == pytest.approx(err_uce[0], rel=1e-6)
    # the retained concept and the empty prompt stay close to the original outputs
    with torch.no_grad():
        keep = embed(pipe, ["dog", ""]).reshape(-1, c.shape[-1]).double()
        drift = max(float((keep @ (w1 - w0).T).norm() / (keep @ w0.T).norm())
                    for w0, w1 in zip(original, _weights(rece), strict=True))
    assert drift < 0.2


def test_regenerating_embedding_is_the_regularised_least_squares_solution():
    torch.manual_seed(0)
    w_old = [torch.randn(6, 4, dtype=torch.float64) for _ in range(3)]
    w_new = [w + 0.3 * torch.randn_like(w) for w in w_old]
    c = torch.randn(1, 2, 4, dtype=torch.float64)
    adv, _ = regenerating_embeddings(w_new, w_old, c, 0.5)
    # gradient of Σ||W' x - W c||² + γ||x||² vanishes at the solution
    for t in range(2):
        x = adv[0, t].clone().requires_grad_(True)
        fit = sum(((wn @ x - wo @ c[0, t]) ** 2).sum() for wn, wo in zip(w_new, w_old, strict=True))
        loss = fit + 0.5 * (x**2).sum()
        (g,) = torch.autograd.grad(loss, x)
        assert g.abs().max() < 1e-9


def test_rece_defaults_follow_the_readme():
    p = RECE.Params()
    assert (p.epochs, p.regular_scale, p.rece_lamb) == (3, 0.1, 0.1)
    assert (p.rece_erase_scale, p.rece_preserve_scale) == (1.0, 0.1)
    assert (p.lamb, p.guide) == (0.5, " ")  # the UCE stage keeps UCE's defaults


@pytest.mark.parametrize("params, key", [
    ({"erase": []}, "erase"), ({"preset": "cats"}, "preset"), ({"epochs": 0}, "epochs"),
    ({"regular_scale": -1}, "regular_scale"), ({"rece_erase_scale": -0.5}, "rece_erase_scale"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, key):
    with pytest.raises(UserError) as e:
        _plan(tiny_pipe_dir, tmp_path, "rece", params)
    assert key in str(e.value) and "\n" not in str(e.value)


@needs_toy
@pytest.mark.slow
def test_rece_on_the_toy_world(tmp_path):
    r = erase_on_toy(tmp_path, "rece", {"guide": "shape", "epochs": 1, "regular_scale": 1e-3}, concept="cross")
    assert r["acc_after"] <= max(0.10, 0.5 * r["acc_before"])
    assert r["ira_after"] >= 0.85 * r["ira_before"]


class TestContract(TechniqueContract):
    name = "rece"
    params = {"epochs": 1}
