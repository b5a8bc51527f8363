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
from evallearn.techniques import _training as T
from evallearn.techniques.stereo import STEREO, Token, stratified

TINY = {"iterations": 4, "n_iterations": 2, "num_adv_concepts": 2, "ti_steps": 3, "ddim_steps": 4,
        "num_gallery_images": 2, "gallery_steps": 2, "anchor_prompts": ["an animal"], "ste_lr": 1e-3, "reo_lr": 1e-3}


def plan_for(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat"},
                        "technique": {"name": "stereo", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def test_a_fresh_token_encodes_like_its_initializer_word(pipe):
    tok = Token(pipe, "object")
    templates = ["{}", "a photo of a {}"]
    assert torch.allclose(tok.encode(pipe, templates), T.encode(pipe, ["object", "a photo of a object"]), atol=1e-6)
    tok.vector = tok.vector + torch.randn(tok.vector.shape, generator=torch.Generator().manual_seed(0))
    moved = tok.encode(pipe, ["a photo of a {}"])
    assert not torch.allclose(moved, T.encode(pipe, ["a photo of a object"]), atol=1e-3)
    with pytest.raises(UserError):
        Token(pipe, "a b")


def test_stratified_sampling_is_balanced():
    order = stratified(3, 10, random.Random(0))
    assert len(order) == 10 and sorted(set(order)) == [0, 1, 2]
    assert all(order.count(i) in (3, 4) for i in range(3))


def test_stereo_keeps_only_a_new_unet(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, TINY)
    calls = []
    tech = plan.technique
    erase, invert = tech.erase, tech.invert
    tech.erase = lambda *a, **k: (calls.append(("erase", a[-2], k.get("compositional") is not None)), erase(*a, **k))
    tech.invert = lambda *a, **k: (calls.append(("invert", a[-1])), invert(*a, **k))
    edited = tech.apply(copy.deepcopy(pipe), plan.ctx)
    # STE: erase + inversion per round, then one REO erasure with the compositional target
    assert [c[0] for c in calls] == ["erase", "invert", "erase", "invert", "erase"]
    assert calls[-1][2] and not calls[0][2]
    changed = [n for (n, a), b in zip(pipe.unet.named_parameters(), edited.unet.parameters(), strict=True)
               if not torch.equal(a, b)]
    assert changed and not any("attn2" in n for n in changed)  # noxattn by default
    assert all(torch.equal(a, b) for a, b in zip(pipe.text_encoder.parameters(), edited.text_encoder.parameters(),
                                                 strict=True))
    assert len(pipe.tokenizer) == len(edited.tokenizer)


def test_reo_starts_from_the_original_unet(pipe, tiny_pipe_dir, tmp_path):
    """With zero REO learning rate, the result is the original UNet whatever STE did."""
    plan = plan_for(tiny_pipe_dir, tmp_path, {**TINY, "reo_lr": 1e-30, "n_iterations": 1})
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(pipe.unet.parameters(), edited.unet.parameters(),
                                                                 strict=True))


def test_defaults_follow_the_readme_command():
    p = STEREO.Params()
    assert (p.train_method, p.n_iterations, p.num_adv_concepts, p.iterations, p.ste_lr, p.reo_lr,
            p.negative_guidance, p.compositional_guidance_scale, p.ti_steps, p.ti_lr) == (
        "noxattn", 2, 2, 200, 0.5e-5, 2e-5, 2.0, 2.0, 3000, 5e-3)


@needs_toy
@opt_in
@pytest.mark.slow
def test_stereo_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "stereo",
                     {"iterations": 150, "n_iterations": 1, "num_adv_concepts": 1, "ti_steps": 100, "ddim_steps": 20,
                      "num_gallery_images": 32, "gallery_steps": 20, "gallery_guidance": 6.0, "ste_lr": 1e-4,
                      "reo_lr": 1e-4})
    assert v["acc_after"] <= v["acc_before"] - 0.3, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "stereo"
    params = {**TINY, "iterations": 1, "n_iterations": 1, "num_adv_concepts": 1, "ti_steps": 1, "ddim_steps": 3,
              "num_gallery_images": 1}
