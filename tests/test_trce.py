import copy
import random

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques.trce import (
    TRCE,
    contrastive_loss,
    keyword_positions,
    record_trajectory,
    step_timestep,
    trainable,
)
from evallearn.techniques.uce import cross_attention_projections, embed

#: the cheapest stage-2 budget that runs every part of it
TINY_STAGE2 = {"lamb": 0.1, "images_per_prompt": 1, "regularization_samples": 2, "regularization_batch_size": 2,
               "epochs": 1, "trajectory_steps": 3, "max_early_timestep": 1, "augment_num": 2}


def _plan(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog", "car"]},
                        "technique": {"name": "trce", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def _changed(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def _eot(pipe, texts):
    ids = pipe.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    return [int((row == pipe.tokenizer.eos_token_id).nonzero()[0]) for row in ids]


def test_stage1_is_the_eot_least_squares_solution(pipe, tiny_pipe_dir, tmp_path):
    """Default token weights (0, 1, 0, 0):
    W' = (λW + Σ W c⁺ cᵀ / P + s/N Σ W c_p c_pᵀ)(λI + Σ c cᵀ / P + s/N Σ c_p c_pᵀ)⁻¹
    with c the trigger prompts' first [EoT] columns and c⁺ the safe prompts'; computed here from the
    raw embeddings."""
    params = {"stage2": False, "safe": ["animal"], "templates": ["a photo of {}", "{} in a field"],
              "preserve": ["a dog", "a red car", "a house"], "edit_preserve_scale": 0.5, "lamb": 0.05}
    plan = _plan(tiny_pipe_dir, tmp_path, params)
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    old = [t.format("cat") for t in params["templates"]]  # the concept here has no synonyms
    new = [t.format("animal") for t in params["templates"]]
    e_old, e_new = embed(pipe, old).double(), embed(pipe, new).double()
    c = torch.stack([e_old[k, i] for k, i in enumerate(_eot(pipe, old))])
    c_new = torch.stack([e_new[k, i] for k, i in enumerate(_eot(pipe, new))])
    cp = embed(pipe, params["preserve"]).double().reshape(-1, c.shape[1])
    s, n, big_p = 0.5, 3, len(old)
    for before, after in zip(cross_attention_projections(pipe.unet), cross_attention_projections(edited.unet),
                             strict=True):
        w = before.weight.double()
        a = 0.05 * w + (c_new @ w.T).T @ c / big_p + s / n * (cp @ w.T).T @ cp
        b = 0.05 * torch.eye(w.shape[1], dtype=w.dtype) + c.T @ c / big_p + s / n * cp.T @ cp
        expected = a @ torch.linalg.inv(b)
        assert torch.allclose(after.weight.double(), expected, atol=2e-4, rtol=1e-3)
        # the trigger's [EoT] now gives (nearly) the safe prompt's output
        err = ((c @ after.weight.double().T) - (c_new @ w.T)).norm() / (c_new @ w.T).norm()
        assert err < 0.05
    assert not _changed(pipe.text_encoder, edited.text_encoder)


def test_keyword_and_last_eot_columns_enter_with_their_weights(pipe, tiny_pipe_dir, tmp_path):
    """Only the keyword tokens weighted: the keyword's column maps to the safe prompt's last [EoT]."""
    params = {"stage2": False, "safe": ["animal"], "templates": ["a photo of {}"], "preserve": ["a dog"],
              "token_weights": [0, 0, 0, 1], "edit_preserve_scale": 1e-3, "lamb": 1e-3}
    plan = _plan(tiny_pipe_dir, tmp_path, params)
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    e_old, e_new = embed(pipe, ["a photo of cat"])[0], embed(pipe, ["a photo of animal"])[0]
    key = 4  # <sot> a photo of cat
    for before, after in zip(cross_attention_projections(pipe.unet), cross_attention_projections(edited.unet),
                             strict=True):
        target = before(e_new[76])
        assert (after(e_old[key]) - target).norm() / target.norm() < 0.05
        assert (before(e_old[key]) - target).norm() / target.norm() > 0.2


def test_keyword_positions_and_timestep_bins():
    assert keyword_positions([10, 11, 12, 13], [12, 13]) == [3, 4]
    assert keyword_positions([10, 11], [12]) == []
    rng = random.Random(0)
    # the authors' randint((49 - k) * 20, (50 - k) * 20) for 50 steps of 1000
    assert all(980 <= step_timestep(0, 50, 1000, rng) < 1000 for _ in range(50))
    assert all(480 <= step_timestep(25, 50, 1000, rng) < 500 for _ in range(50))
    assert {step_timestep(49, 50, 1000, rng) for _ in range(200)} == set(range(20))


def test_contrastive_loss_is_the_hinge_on_the_two_distances():
    out = torch.full((1, 1, 2, 2), 1.0)

    class Stub(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            return type("O", (), {"sample": out})()

    prefer, reject = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0)
    x, cond = torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 4)
    # ‖1-0‖² = 1, ‖1-3‖² = 4: β (1 - 4 + 0.01) < 0 -> 0
    assert float(contrastive_loss(Stub(), x, 10, cond, prefer, reject, 1.0, 0.01)) == 0.0
    # swapped: 2 · (4 - 1 + 0.01) = 6.02
    assert float(contrastive_loss(Stub(), x, 10, cond, reject, prefer, 2.0, 0.01)) == pytest.approx(6.02)


def test_trajectory_matches_the_pipeline_ddim(pipe):
    from diffusers import DDIMScheduler

    from evallearn.techniques import training as T

    p = copy.deepcopy(pipe)
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config)
    noise = torch.randn((1, *T.latent_shape(p, 32, 32)), generator=torch.Generator().manual_seed(1))
    ref = p("a cat", num_inference_steps=4, guidance_scale=3.0, latents=noise.clone(), output_type="latent").images
    steps = record_trajectory(p.unet, T.ddim_scheduler(p, 4), T.encode(p, ["a cat"]), T.encode(p, [""]), 3.0,
                              noise, 4)
    assert len(steps) == 4 and torch.allclose(steps[-1], ref, atol=1e-5)


def test_stage2_trains_only_self_attention_and_queries(pipe, tiny_pipe_dir, tmp_path):
    assert trainable("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight")
    assert trainable("mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight")
    assert not trainable("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    stage1 = _plan(tiny_pipe_dir, tmp_path / "a", {**TINY_STAGE2, "stage2": False})
    both = _plan(tiny_pipe_dir, tmp_path / "b", {**TINY_STAGE2, "learning_rate": 1e-3})
    one = stage1.technique.apply(copy.deepcopy(pipe), stage1.ctx)
    two = both.technique.apply(copy.deepcopy(pipe), both.ctx)
    changed = _changed(one.unet, two.unet)
    assert changed and all(trainable(n) for n in changed)
    assert any("attn1" in n for n in changed) and any("attn2.to_q" in n for n in changed)
    # one epoch over one trajectory per trigger ("cat"): one step, with its losses recorded
    assert len(both.technique.losses) == 1 and all(v >= 0 for v in both.technique.losses[0])


def test_defaults_follow_the_authors_configs():
    p = TRCE.Params()
    assert (p.augment_num, p.token_weights, p.edit_preserve_scale, p.lamb, p.preserve_prompts) == (
        15, (0.0, 1.0, 0.0, 0.0), 0.01, 0.0, 30000)
    assert (p.learning_rate, p.epochs, p.guidance, p.refine_preserve_scale, p.beta, p.margin,
            p.max_early_timestep, p.regularization_batch_size, p.images_per_prompt, p.data_guidance,
            p.trajectory_steps) == (1e-6, 3, 15.0, 100.0, 1.0, 0.01, 25, 4, 5, 3.0, 50)


def test_preserve_prompts_drop_corpus_captions_naming_a_trigger(tiny_pipe_dir, tmp_path, monkeypatch):
    plan = _plan(tiny_pipe_dir, tmp_path, {"augment_num": 2})
    # the open world has no corpus: the retain concepts through the templates
    assert plan.technique.preserve_prompts(plan.ctx) == ["a photo of dog", "dog in a photo", "a photo of car",
                                                         "car in a photo"]

    class World:
        def corpus(self, n, seed):
            return ["a cat", "a dog", "a catalogue", "two cat toys"][:n]

    monkeypatch.setattr(type(plan.ctx), "world", property(lambda self: World()))
    assert plan.technique.preserve_prompts(plan.ctx) == ["a dog", "a catalogue"]


@pytest.mark.parametrize("params, message", [
    ({"erase": []}, "erase"),
    ({"erase": ["a", "b", "c"], "safe": ["x", "y"]}, "safe"),
    ({"templates": ["photo of"]}, "templates"),
    ({"max_early_timestep": 50}, "max_early_timestep"),
    ({"token_weights": [1, 0]}, "token_weights"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, message):
    with pytest.raises(UserError) as e:
        _plan(tiny_pipe_dir, tmp_path, params)
    assert message in str(e.value) and "\n" not in str(e.value)


#: the CI's toy runs use 2000 corpus captions for the prior instead of 30 000 (the prior is a mean
#: over them; the defaults give the same accuracies, docs/techniques/trce.md)
CI_PRIOR = {"stage2": False, "preserve_prompts": 2000}
SYNONYMS = {"synonyms": ["plus", "plus sign"]}


@needs_toy
@pytest.mark.slow
def test_stage1_erases_the_cross_with_its_synonyms_as_triggers(tmp_path):
    r = erase_on_toy(tmp_path, "trce", CI_PRIOR, **SYNONYMS)  # measured: 1.00 -> 0.25, IRA 0.917 -> 0.917
    assert r["acc_after"] <= 0.25, r
    assert r["ira_after"] >= 0.85 * r["ira_before"], r


@needs_toy
@pytest.mark.slow
def test_stage1_erases_a_colour_on_the_toy_world(tmp_path):
    r = erase_on_toy(tmp_path, "trce", CI_PRIOR, concept="red")  # measured: 1.00 -> 0.00, IRA 0.844 -> 0.813
    assert r["acc_after"] <= 0.25, r
    assert r["ira_after"] >= 0.85 * r["ira_before"], r


@needs_toy
@opt_in  # a documented non-erasure: not worth its CI minute
@pytest.mark.xfail(strict=True, reason="with 'cross' as the only trigger the toy UNet still draws it from the word "
                   "and padding columns (docs/techniques/trce.md): 1.00 -> 1.00")
def test_stage1_on_the_toy_cross_alone(tmp_path):
    r = erase_on_toy(tmp_path, "trce", CI_PRIOR)
    assert r["acc_after"] <= 0.25, r


@needs_toy
@opt_in
@pytest.mark.parametrize("concept, keys", [("cross", SYNONYMS), ("red", {})])
def test_trce_on_the_toy_world(tmp_path, concept, keys):
    r = erase_on_toy(tmp_path, "trce", {}, concept=concept, **keys)
    assert r["acc_after"] <= 0.25, r
    assert r["ira_after"] >= 0.85 * r["ira_before"], r


class TestContract(TechniqueContract):
    name = "trce"
    # λ > 0: four retain prompts alone leave the λ = 0 system singular on the 32-d tiny encoder
    params = {**TINY_STAGE2, "preserve_prompts": 4, "lamb": 0.1}
