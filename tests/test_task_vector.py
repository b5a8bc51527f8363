import copy

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract
from test_gradient_ascent import TINY, data_loss

from evallearn.config import parse_config
from evallearn.runner import prepare
from evallearn.techniques.gradient_ascent import training_data
from evallearn.techniques.task_vector import TaskVector, negate


def test_negate_is_theta0_minus_alpha_tau():
    m = torch.nn.Linear(2, 2)
    base = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.weight.add_(1.0)
    negate(m, base, 1.75)
    assert torch.allclose(m.weight, base["weight"] - 1.75)
    assert torch.equal(m.bias, base["bias"])


def test_task_vector_subtracts_the_fine_tune(pipe, tiny_pipe_dir, tmp_path):
    def plan(alpha):
        cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat"},
                            "technique": {"name": "task_vector", "params": {**TINY, "alpha": alpha}},
                            "output_dir": str(tmp_path / str(alpha)), "sampler": {"height": 16, "width": 16}})
        return prepare(cfg)

    p0, p1 = plan(0.0), plan(1.75)
    latents, prompts = training_data(copy.deepcopy(pipe), p1.ctx, p1.technique.params)
    # alpha 0 gives back the base model; alpha 1.75 is base - 1.75 x (fine-tuned - base)
    same = p0.technique.apply(copy.deepcopy(pipe), p0.ctx).unet
    assert all(torch.allclose(a, b) for a, b in zip(same.parameters(), pipe.unet.parameters(), strict=True))
    neg = p1.technique.apply(copy.deepcopy(pipe), p1.ctx).unet
    ft = copy.deepcopy(pipe)
    from evallearn.techniques.gradient_ascent import finetune

    finetune(ft, p1.ctx, p1.technique.params, sign=1.0, label="ft")
    for a, b, c in zip(neg.parameters(), pipe.unet.parameters(), ft.unet.parameters(), strict=True):
        assert torch.allclose(a, b - 1.75 * (c - b), atol=1e-6)
    # the fine-tune lowers the loss on the concept's images, the negation raises it
    base = data_loss(pipe.unet, pipe, latents, prompts)
    assert data_loss(ft.unet, pipe, latents, prompts) < base < data_loss(neg, pipe, latents, prompts)


def test_default_alpha():
    assert TaskVector.Params().alpha == 1.75


@needs_toy
@opt_in
@pytest.mark.slow
def test_task_vector_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "task_vector",
                     {"num_images": 10, "image_steps": 20, "image_guidance": 6.0, "updates": 60, "lr": 1e-4})
    assert v["acc_after"] <= v["acc_before"] - 0.3, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "task_vector"
    params = {**TINY, "num_images": 1, "updates": 1, "batch_size": 1}
