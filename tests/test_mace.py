import copy

import pytest
import torch
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques._closed_form import cross_attention_projections, embed
from evallearn.techniques.mace import MACE, cfr_columns, matching_indices


def _plan(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog", "car"]},
                        "technique": {"name": "mace", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"steps": 2}})
    return prepare(cfg)


def test_matching_indices_skip_the_concept_and_align_the_padding():
    # BOS a photo of ship EOS   vs   BOS a photo of the ground EOS
    old, new = [0, 1, 2, 3, 50, 9], [0, 1, 2, 3, 60, 61, 9]
    io, jn = matching_indices(old, new, length=10)
    assert io == [0, 1, 2, 3, 5, 6, 7, 8] and jn == [0, 1, 2, 3, 6, 7, 8, 9]
    io, jn = matching_indices(new, old, length=10)
    assert io == [0, 1, 2, 3, 6, 7, 8, 9] and jn == [0, 1, 2, 3, 5, 6, 7, 8]


def test_cfr_uses_surrounding_words_only(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_pipe_dir)))
    ctxs, tgts = cfr_columns(pipe, [("cat", "dog")], ["a photo of {}"])
    assert ctxs.shape == tgts.shape == (76, ctxs.shape[1])  # 77 tokens minus the concept's one
    e = embed(pipe, ["a photo of cat"])[0]
    assert torch.equal(ctxs[:4], e[:4]) and torch.equal(ctxs[4:], e[5:])


def test_mace_trains_the_lora_and_fuses_it(tiny_pipe_dir, tmp_path):
    from evallearn.models.loading import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_pipe_dir)))
    params = {"erase": ["cat", "bird"], "mapping": ["animal"], "lamb": 1.0, "learning_rate": 1e-2,
              "max_train_steps": 12, "num_images": 2, "data_steps": 2, "aug_length": 4}
    plan = _plan(tiny_pipe_dir, tmp_path, params)
    edited = copy.deepcopy(pipe)
    plan.technique.apply(edited, plan.ctx)
    losses = plan.technique.losses
    assert set(losses) == {"cat", "bird"}  # one LoRA per concept
    for log in losses.values():
        assert len(log) == 12 and sum(log[-3:]) < sum(log[:3])  # attention on the concept falls
    # only attn2 K/V change
    changed = {n for (n, a), b in zip(pipe.unet.named_parameters(), edited.unet.parameters(), strict=True)
               if not torch.equal(a, b)}
    assert changed and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    # the concept word's keys/values moved more than an unrelated word's
    with torch.no_grad():
        cat, car = embed(pipe, ["a photo of cat"])[0, 4], embed(pipe, ["a photo of car"])[0, 4]
        moved = [((a(cat) - b(cat)).norm() / b(cat).norm(), (a(car) - b(car)).norm() / b(car).norm())
                 for a, b in zip(cross_attention_projections(edited.unet), cross_attention_projections(pipe.unet),
                                 strict=True)]
    assert sum(m[0] for m in moved) > sum(m[1] for m in moved)


def test_mace_defaults_follow_the_object_config():
    p = MACE.Params()
    assert (p.lamb, p.train_preserve_scale, p.fuse_preserve_scale, p.rank, p.learning_rate, p.max_train_steps,
            p.aug_length, p.num_images, p.use_pooler, p.importance_sampling) == (
        1000.0, 0.0, 0.0, 1, 1e-5, 50, 30, 8, True, True)


@pytest.mark.parametrize("params, key", [
    ({"erase": []}, "erase"), ({"erase": ["a", "b", "c"], "mapping": ["x", "y"]}, "mapping"),
    ({"templates": ["photo"]}, "templates"), ({"lamb": -1}, "lamb"), ({"mask": "sam"}, "mask"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, key):
    with pytest.raises(UserError) as e:
        _plan(tiny_pipe_dir, tmp_path, params)
    assert key in str(e.value) and "\n" not in str(e.value)


@needs_toy
@pytest.mark.slow
def test_mace_on_the_toy_world(tmp_path):
    r = erase_on_toy(tmp_path, "mace", {"mapping": ["shape"], "lamb": 1.0, "learning_rate": 1e-3,
                                        "max_train_steps": 50, "data_steps": 20, "data_guidance": 6.0},
                     concept="cross")
    assert r["acc_after"] <= max(0.10, 0.5 * r["acc_before"])
    assert r["ira_after"] >= 0.85 * r["ira_before"]


class TestContract(TechniqueContract):
    name = "mace"
    params = {"max_train_steps": 2, "num_images": 1, "data_steps": 2, "aug_length": 1}
