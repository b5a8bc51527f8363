import copy

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques import _training as T
from evallearn.techniques.gradient_ascent import GradientAscent, training_data

TINY = {"num_images": 2, "image_steps": 2, "updates": 4, "batch_size": 2, "grad_accum": 1, "lr": 1e-3,
        "use_ema": False, "random_flip": False}


def plan_for(tiny_pipe_dir, tmp_path, name, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                        "technique": {"name": name, "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def data_loss(unet, pipe, latents, prompts):
    """Diffusion loss on the training images at fixed noise draws."""
    gen = torch.Generator().manual_seed(7)
    cond = T.encode(pipe, prompts)
    total = 0.0
    with torch.no_grad():
        for _ in range(6):
            xt, noise, t = T.add_noise(pipe, latents, gen)
            total += torch.nn.functional.mse_loss(unet(xt, t, cond).sample, noise).item()
    return total / 6


def test_gradient_ascent_raises_the_loss_on_the_concept_images(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, "gradient_ascent", TINY)
    latents, prompts = training_data(copy.deepcopy(pipe), plan.ctx, plan.technique.params)
    assert prompts == ["a picture of a cat"] * 2 and latents.shape == (2, 4, 8, 8)
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    assert data_loss(edited.unet, pipe, latents, prompts) > 1.2 * data_loss(pipe.unet, pipe, latents, prompts)
    # the whole UNet is trained, the text encoder is not
    assert all(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), edited.unet.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(pipe.text_encoder.parameters(), edited.text_encoder.parameters(),
                                                 strict=True))


def test_ema_weights_move_less_than_the_raw_weights(pipe, tiny_pipe_dir, tmp_path):
    raw = plan_for(tiny_pipe_dir, tmp_path / "raw", "gradient_ascent", TINY)
    ema = plan_for(tiny_pipe_dir, tmp_path / "ema", "gradient_ascent", {**TINY, "use_ema": True})
    a = raw.technique.apply(copy.deepcopy(pipe), raw.ctx).unet
    b = ema.technique.apply(copy.deepcopy(pipe), ema.ctx).unet

    def dist(m):
        return sum((x - y).pow(2).sum() for x, y in zip(m.parameters(), pipe.unet.parameters(), strict=True)).sqrt()

    assert 0 < dist(b) < dist(a)


def test_defaults_follow_the_when_erased_script():
    p = GradientAscent.Params()
    assert (p.num_images, p.updates, p.batch_size, p.grad_accum, p.lr, p.max_grad_norm, p.use_ema) == (
        10, 20, 5, 4, 1e-5, 1.0, False)  # raw weights: the authors' script never steps its EMA copy


def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path):
    with pytest.raises(UserError) as e:
        plan_for(tiny_pipe_dir, tmp_path, "gradient_ascent", {"updates": 0})
    assert "updates" in str(e.value) and "\n" not in str(e.value)


@needs_toy
@opt_in
@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "partial on the toy world (fixed judge, 2026-11-23), erasing 'cross' at guidance 6, 16 prompts: gradient "
    "ascent takes the other shapes down with the cross. updates 20, lr 1e-4: cross 1.00 -> 0.69, IRA 0.92 -> "
    "0.71 (77 %); 10 updates: 1.00 -> 0.81, IRA 0.88; 15: 1.00 -> 0.81, IRA 0.71; 40 at lr 5e-5: 1.00 -> 0.50, "
    "IRA 0.73. No point of the sweep meets both -0.3 and >= 85 % of the base IRA"))
def test_gradient_ascent_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "gradient_ascent",
                     {"num_images": 10, "image_steps": 20, "image_guidance": 6.0, "updates": 20, "lr": 1e-4})
    assert v["acc_after"] <= v["acc_before"] - 0.3, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "gradient_ascent"
    params = {**TINY, "num_images": 1, "updates": 1, "batch_size": 1}
