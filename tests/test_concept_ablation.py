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
from evallearn.techniques.concept_ablation import ConceptAblation, target_prompt


def plan_for(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat"},
                        "technique": {"name": "concept_ablation", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def test_target_prompts_follow_the_script():
    import random

    rng = random.Random(0)
    assert target_prompt("a photo of a robot", "robot", "r2d2", "object", rng) == "a photo of a r2d2"
    assert target_prompt("robots and robotics", "robot", "r2d2", "object", rng) == "robots and robotics"
    styled = {target_prompt("a painting", "painting", "van gogh", "style", random.Random(s)) for s in range(20)}
    assert styled == {"a painting, in the style of van gogh", "in van gogh's style, a painting"}


def test_concept_predictions_move_to_the_anchor(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, {"anchor": "dog", "anchor_prompts": ["a photo of a dog"],
                                              "num_class_images": 4, "image_steps": 2, "steps": 30, "batch_size": 2,
                                              "lr": 2e-3, "random_flip": False})
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    changed = [n for (n, a), b in zip(pipe.unet.named_parameters(), edited.unet.parameters(), strict=True)
               if not torch.equal(a, b)]
    assert changed and all("attn2.to_k" in n or "attn2.to_v" in n for n in changed)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 300, 600, 900])
    cat, dog = T.encode(pipe, ["a photo of a cat"] * 4), T.encode(pipe, ["a photo of a dog"] * 4)
    with torch.no_grad():
        gap_before = (pipe.unet(x, t, cat).sample - pipe.unet(x, t, dog).sample).norm()
        gap_after = (edited.unet(x, t, cat).sample - edited.unet(x, t, dog).sample).norm()
    assert gap_after < 0.5 * gap_before


def test_anchor_is_required_off_the_toy_world(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, {"steps": 1})
    with pytest.raises(UserError, match="anchor"):
        plan.technique.apply(copy.deepcopy(pipe), plan.ctx)


def test_defaults_follow_the_readme_object_recipe():
    p = ConceptAblation.Params()
    assert (p.loss, p.parameter_group, p.steps, p.batch_size, p.lr, p.scale_lr, p.num_class_images) == (
        "model", "cross-attn", 100, 8, 2e-6, True, 1000)


@needs_toy
@opt_in
@pytest.mark.slow
def test_concept_ablation_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "concept_ablation",
                     {"num_class_images": 90, "image_steps": 20, "steps": 100, "batch_size": 8, "lr": 3e-5})
    assert v["acc_after"] <= v["acc_before"] - 0.3, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "concept_ablation"
    params = {"anchor": "dog", "anchor_prompts": ["a photo of a dog"], "num_class_images": 1, "image_steps": 2,
              "steps": 1, "batch_size": 1, "random_flip": False}
