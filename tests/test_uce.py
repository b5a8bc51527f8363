import copy

import pytest
import torch
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques.uce import UCE, aligned_concept_embeddings, cross_attention_projections, embed


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    return load_pipeline(resolve_model(str(tiny_pipe_dir)))


def _ctx(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog", "car"]},
                        "technique": {"name": "uce", "params": params}, "output_dir": str(tmp_path)})
    return prepare(cfg)


def test_uce_maps_erased_embeddings_to_the_guide_and_keeps_preserved(pipe, tiny_pipe_dir, tmp_path):
    plan = _ctx(tiny_pipe_dir, tmp_path, {"guide": "animal", "lamb": 0.01, "preserve_scale": 1.0})
    edited = copy.deepcopy(pipe)
    plan.technique.apply(edited, plan.ctx)
    with torch.no_grad():
        c_old, c_new = aligned_concept_embeddings(pipe, ["cat"], ["animal"])
        keep = embed(pipe, ["dog", "car"]).reshape(-1, c_old.shape[-1])
        for before, after in zip(cross_attention_projections(pipe.unet), cross_attention_projections(edited.unet),
                                 strict=True):
            target = before(c_new)
            err_before = (before(c_old) - target).norm() / target.norm()
            err_after = (after(c_old) - target).norm() / target.norm()
            assert err_after < 0.3 * err_before
            drift = (after(keep) - before(keep)).norm() / before(keep).norm()
            assert drift < 0.05
    # the text encoder is untouched
    assert all(torch.equal(a, b) for a, b in zip(pipe.text_encoder.parameters(), edited.text_encoder.parameters(),
                                                  strict=True))


def test_uce_defaults_follow_the_authors_script():
    from evallearn.techniques.uce import auto_preserve_scale

    p = UCE.Params()
    assert (p.lamb, p.erase_scale, p.preserve_scale, p.guide, p.technique, p.with_to_k) == (
        0.5, 1.0, None, " ", "replace", True)
    # the script's rule: max(0.1, 1/n) over the preserved texts (the empty prompt included)
    assert [auto_preserve_scale(n) for n in (1, 3, 4, 20)] == [1.0, 0.333, 0.25, 0.1]


def test_uce_preserves_the_empty_prompt_and_templates_only_expand_erased_texts(pipe, tiny_pipe_dir, tmp_path):
    plan = _ctx(tiny_pipe_dir, tmp_path, {"templates": ["a photo of {}"]})
    old, new, keep = plan.technique.texts(plan.ctx)
    assert old == ["cat", "a photo of cat"] and new == [" ", " "] and keep == ["", "dog", "car"]
    edited = copy.deepcopy(pipe)
    plan.technique.apply(edited, plan.ctx)
    with torch.no_grad():
        empty = embed(pipe, [""])[0]
        cat = embed(pipe, ["cat"])[0, 1:2]
        for before, after in zip(cross_attention_projections(pipe.unet), cross_attention_projections(edited.unet),
                                 strict=True):
            # the unconditional embedding barely moves; the erased word does
            assert (after(empty) - before(empty)).norm() / before(empty).norm() < 0.1
            assert (after(cat) - before(cat)).norm() / before(cat).norm() > 0.2


@pytest.mark.parametrize("params, message", [
    ({"erase": []}, "erase list of concepts to erase is empty"),
    ({"preset": "cats"}, "technique.params.preset"),
    ({"erase_scale": -1}, "technique.params.erase_scale"),
    ({"templates": ["photo of"]}, "needs a '{}'"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, message):
    with pytest.raises(UserError) as e:
        _ctx(tiny_pipe_dir, tmp_path, params)
    assert message.split()[0] in str(e.value) and "\n" not in str(e.value)


@needs_toy
@pytest.mark.slow
def test_uce_on_the_toy_world(tmp_path):
    r = erase_on_toy(tmp_path, "uce", {"guide": "shape"})  # erases "cross"
    assert r["acc_after"] <= max(0.10, 0.5 * r["acc_before"]), r
    assert r["ira_after"] >= 0.85 * r["ira_before"], r


class TestContract(TechniqueContract):
    name = "uce"
