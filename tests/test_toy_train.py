"""The toy trainer (``evallearn_toy.train``): what ``eval-learn toy train`` promises, checked on tiny
budgets — a run is a pure function of its seed, a resumed run continues exactly as an uninterrupted one,
the EMA's fused update is the per-parameter one, and the learning-rate schedule has the documented shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evallearn_toy.render import render_dataset
from evallearn_toy.train import EMA, Budgets, _lr_factor, build_vae, encode_latents, train_t2i


@pytest.fixture(scope="module")
def small_world():
    images, labels = render_dataset(64, 0)
    vae = build_vae().eval()
    return encode_latents(vae, images) * 0.5, labels, vae


def _budgets(steps: int) -> Budgets:
    return Budgets(unet_steps=steps, unet_batch=4, unet_channels=(8, 16, 16), checkpoint_every=2)


def _train(small_world, out, steps, seed=0):
    latents, labels, vae = small_world
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a run is deterministic for a fixed thread count
    try:
        pipe = train_t2i(latents, labels, vae, None, _budgets(steps), seed, out, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}, pipe


def test_t2i_training_is_a_function_of_its_seed_and_resumes_exactly(small_world, tmp_path):
    straight, _ = _train(small_world, tmp_path / "a", 4)
    again, _ = _train(small_world, tmp_path / "b", 4)
    other, _ = _train(small_world, tmp_path / "c", 4, seed=1)
    # the same run stopped after 2 steps (its checkpoint holds state.pt), then resumed to 4
    _train(small_world, tmp_path / "d", 2)
    resumed, _ = _train(small_world, tmp_path / "d", 4)
    assert (tmp_path / "d" / "ckpt-00004" / "unet").is_dir()
    for k in straight:
        assert torch.equal(straight[k], again[k]), k
        assert torch.equal(straight[k], resumed[k]), k
    assert any(not torch.equal(straight[k], other[k]) for k in straight)


def test_fused_ema_update_matches_the_per_parameter_one():
    torch.manual_seed(0)
    live = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    a, b = EMA([live]), EMA([live])
    for step in range(3):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
            live[1].running_mean.add_(1.0)
        a.update([live], step, foreach=True)
        b.update([live], step, foreach=False)
    for pa, pb in zip(a.shadow[0].state_dict().values(), b.shadow[0].state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-7)
    # hand-computed first update: decay min(0.999, 1/10) = 0.1, so shadow = 0.1 * old + 0.9 * new
    torch.manual_seed(0)
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    e = EMA([m])
    with torch.no_grad():
        m.weight.fill_(3.0)
    e.update([m], 0)
    assert e.shadow[0].weight.item() == pytest.approx(0.1 * 1.0 + 0.9 * 3.0)
    # buffers are copied, not averaged
    assert torch.equal(a.shadow[0][1].running_mean, live[1].running_mean)


def test_learning_rate_schedule_warms_up_holds_then_anneals():
    b = Budgets(unet_steps=1000, lr_decay_steps=400)
    assert _lr_factor(0, b) == pytest.approx(1 / 200)
    assert _lr_factor(99, b) == pytest.approx(0.5)
    assert _lr_factor(300, b) == 1.0
    assert _lr_factor(599, b) == 1.0  # the anneal starts at step 1000 - 400
    assert _lr_factor(800, b) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert _lr_factor(1000, b) == pytest.approx(0.0, abs=1e-12)
    # no anneal by default; a decay longer than the run anneals the whole run
    assert _lr_factor(999, Budgets(unet_steps=1000)) == 1.0
    short = Budgets(unet_steps=10, lr_decay_steps=400)
    assert _lr_factor(5, short) == pytest.approx(min(1.0, 6 / 200) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert np.isfinite(_lr_factor(10, short))
