import copy

import pytest
import torch
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques.ssd import SSD, dampen


def _plan(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog", "car"]},
                        "technique": {"name": "ssd", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"steps": 2}})
    return prepare(cfg)


def test_dampening_matches_hand_computed_values():
    p = torch.nn.Parameter(torch.tensor([2.0, 2.0, 2.0, -4.0]))
    f_forget = {"w": torch.tensor([1.0, 30.0, 50.0, 8.0])}
    f_retain = {"w": torch.tensor([1.0, 2.0, 5.0, 0.5])}
    stats = dampen({"w": p}, f_forget, f_retain, alpha=10.0, lamb=1.0)
    # selected: 30 > 20 (beta 2/30), 8 > 5 (beta 0.5/8); not: 1 > 10, 50 > 50
    assert torch.allclose(p.data, torch.tensor([2.0, 2.0 * 2 / 30, 2.0, -4.0 * 0.5 / 8]))
    assert stats["selected"] == 2 and stats["total"] == 4
    # beta never exceeds 1 (lambda large): selected weights are kept, never grown
    q = torch.nn.Parameter(torch.tensor([3.0]))
    dampen({"w": q}, {"w": torch.tensor([30.0])}, {"w": torch.tensor([1.0])}, alpha=10.0, lamb=100.0)
    assert q.item() == 3.0


def test_ssd_only_shrinks_selected_unet_weights(tiny_pipe_dir, tmp_path):
    from evallearn.models.loading import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_pipe_dir)))
    plan = _plan(tiny_pipe_dir, tmp_path, {"num_samples": 3, "parameters": "cross_attention"})
    edited = copy.deepcopy(pipe)
    plan.technique.apply(edited, plan.ctx)
    changed = 0
    for (name, a), b in zip(pipe.unet.named_parameters(), edited.unet.parameters(), strict=True):
        if ".attn2." not in name:
            assert torch.equal(a, b), name
            continue
        assert torch.all(b.abs() <= a.abs() + 1e-7)  # scaled by beta in (0, 1]
        assert torch.all((a * b) >= 0)  # never flips a sign
        changed += int((a != b).sum())
    stats = plan.technique.stats
    assert 0 < changed <= stats["selected"] < stats["total"]
    assert all(torch.equal(a, b) for a, b in zip(pipe.text_encoder.parameters(), edited.text_encoder.parameters(),
                                                  strict=True))


def test_ssd_images_use_the_runs_scheduler_whatever_the_pipeline_holds(tiny_pipe_dir, tmp_path):
    # the edit must not depend on which scheduler an earlier phase left on the pipeline
    from diffusers import EulerDiscreteScheduler

    from evallearn.models.loading import load_pipeline, resolve_model
    from evallearn.techniques.ssd import generate_latents

    pipe = load_pipeline(resolve_model(str(tiny_pipe_dir)))
    plan = _plan(tiny_pipe_dir, tmp_path, {"num_samples": 2})
    own = pipe.scheduler
    a = generate_latents(pipe, plan.ctx, ["a cat"], 2, seed=3, steps=3)
    assert pipe.scheduler is own
    pipe.scheduler = EulerDiscreteScheduler.from_config(own.config)
    b = generate_latents(pipe, plan.ctx, ["a cat"], 2, seed=3, steps=3)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert torch.equal(a, b)


def test_ssd_defaults_follow_the_paper():
    p = SSD.Params()
    assert (p.selection_weighting, p.dampening_constant, p.num_samples, p.parameters) == (10.0, 1.0, 50, "unet")


@pytest.mark.parametrize("params, key", [
    ({"forget": []}, "forget"), ({"selection_weighting": 0}, "selection_weighting"),
    ({"dampening_constant": -1}, "dampening_constant"), ({"num_samples": 0}, "num_samples"),
    ({"parameters": "everything"}, "parameters"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, key):
    with pytest.raises(UserError) as e:
        _plan(tiny_pipe_dir, tmp_path, params)
    assert key in str(e.value) and "\n" not in str(e.value)


@needs_toy
@pytest.mark.slow
def test_ssd_on_the_toy_world(tmp_path):
    # The paper's alpha = 10, lambda = 1 with 128 Fisher samples per set, at the toy model's own guidance (4).
    # Sweep on the shipped toy model with the current judge (16 prompts; docs/techniques/ssd.md): UA 0.00 ->
    # 0.19 at alpha 10, 0.25 at 8, 0.12 at 7 with IRA kept; alpha <= 6 erases more (0.56 at 6) only by taking
    # the other shapes with it (IRA 84 %). SSD's erasure here is partial: the bar is 2 of 16 images
    # (measured 3: cross accuracy 1.00 -> 0.81).
    r = erase_on_toy(tmp_path, "ssd", {"num_samples": 128, "templates": ["a {}", "a red {}", "a striped {}"]},
                     concept="cross", guidance=None, synonyms=["plus", "plus sign"],
                     retain=["circle", "square", "triangle"])
    assert r["acc_after"] <= r["acc_before"] - 0.125, r
    assert r["ira_after"] >= 0.85 * r["ira_before"], r


class TestContract(TechniqueContract):
    name = "ssd"
    params = {"num_samples": 2, "parameters": "cross_attention"}
