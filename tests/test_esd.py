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
from evallearn.techniques.esd import ESD, esd_step


def _plan(tiny_pipe_dir, tmp_path, params, kind="object"):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "kind": kind},
                        "technique": {"name": "esd", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def _changed(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


@pytest.mark.parametrize("method, kind, check", [
    ("xattn", "object", lambda n: "attn2" in n),
    (None, "style", lambda n: "attn2" in n),  # ESD-x for styles
    (None, "object", lambda n: not ("attn2" in n or "time_embedding" in n or n.startswith("conv_out"))),  # ESD-u
    ("full", "object", lambda n: True),
])
def test_variants_train_their_parameter_sets(pipe, tiny_pipe_dir, tmp_path, method, kind, check):
    params = {"iterations": 2, "ddim_steps": 4, "lr": 1e-3}
    if method:
        params["train_method"] = method
    plan = _plan(tiny_pipe_dir, tmp_path, params, kind)
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    changed = _changed(pipe.unet, edited.unet)
    assert changed and all(check(n) for n in changed)
    if method == "full":
        assert any("time_embedding" in n for n in changed) and any("attn1" in n for n in changed)
    if method is None and kind == "object":  # ESD-u trains far more than attention
        assert any("resnets" in n for n in changed) and not any("attn2" in n for n in changed)
    assert not _changed(pipe.text_encoder, edited.text_encoder)


def test_partial_ddim_matches_the_pipeline_sampler(pipe):
    """``ddim_sample_until`` run to the end equals the pipeline's own DDIM sampling."""
    from diffusers import DDIMScheduler

    p = copy.deepcopy(pipe)
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config)
    shape = (1, *T.latent_shape(p, 32, 32))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    ref = p("a cat", num_inference_steps=6, guidance_scale=3.0, latents=noise.clone(), output_type="latent").images
    sched = T.ddim_scheduler(p, 6)
    mine = T.ddim_sample_until(p.unet, sched, T.encode(p, ["a cat"]), T.encode(p, [""]), 3.0, noise, 6)
    assert torch.allclose(mine, ref, atol=1e-5)
    # stopping early leaves a noisier latent
    half = T.ddim_sample_until(p.unet, T.ddim_scheduler(p, 6), T.encode(p, ["a cat"]), T.encode(p, [""]), 3.0,
                               noise, 3)
    assert not torch.allclose(half, ref, atol=1e-3)


def test_the_student_learns_the_negatively_guided_teacher_target(pipe, tiny_pipe_dir, tmp_path):
    """After training, ESD's loss (student vs frozen-teacher target) on fresh draws is lower, and
    the frozen teacher is the original model."""
    plan = _plan(tiny_pipe_dir, tmp_path, {"iterations": 30, "ddim_steps": 4, "lr": 1e-4, "train_method": "xattn",
                                           "negative_guidance": 1.0})
    p = plan.technique.params
    teacher = T.frozen_copy(pipe.unet)
    sched = T.ddim_scheduler(pipe, p.ddim_steps)
    cond, null = T.encode(pipe, ["cat"]), T.encode(pipe, [""])
    amp = T.Precisioned("cpu")

    def mean_loss(unet):
        gen, rng = torch.Generator().manual_seed(99), random.Random(99)
        with torch.no_grad():
            return sum(esd_step(unet, teacher, sched, cond, null, p, (1, 4, 8, 8), gen, rng, amp).item()
                       for _ in range(12)) / 12

    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    assert mean_loss(edited.unet) < 0.5 * mean_loss(pipe.unet)
    # the prediction for an unrelated prompt moved much less than the concept's
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = sched.timesteps[2]
    with torch.no_grad():
        d_cat = (edited.unet(x, t, T.encode(pipe, ["cat"])).sample - pipe.unet(x, t, cond).sample).norm()
        d_null = (edited.unet(x, t, null).sample - pipe.unet(x, t, null).sample).norm()
    assert d_null < d_cat


def test_weights_are_cached_and_reused(pipe, tiny_pipe_dir, tmp_path):
    plan = _plan(tiny_pipe_dir, tmp_path, {"iterations": 2, "ddim_steps": 4, "lr": 1e-3})
    first, cached = plan.technique.load_or_apply(copy.deepcopy(pipe), plan.ctx)
    assert not cached and (plan.ctx.cache_dir / "unet.safetensors").exists()
    again, cached = ESD(plan.technique.params).load_or_apply(copy.deepcopy(pipe), plan.ctx)
    assert cached and not _changed(first.unet, again.unet)


@pytest.mark.parametrize("params, key", [
    ({"train_method": "attn"}, "train_method"),
    ({"iterations": 0}, "iterations"),
    ({"lr": -1}, "lr"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, key):
    with pytest.raises(UserError) as e:
        _plan(tiny_pipe_dir, tmp_path, params)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_defaults_are_the_papers():
    p = ESD.Params()
    assert (p.iterations, p.lr, p.negative_guidance, p.start_guidance, p.ddim_steps, p.batch_size, p.sample_with) == (
        1000, 1e-5, 1.0, 3.0, 50, 1, "student")


@needs_toy
@opt_in
@pytest.mark.slow
def test_esd_u_erases_cross_on_the_toy_world(tmp_path_factory):
    from evallearn_toy import COLOURS, STYLES
    from evallearn_toy.concepts import TEMPLATES, describe, fill_template

    # the script's multi-prompt option: the concept with each style and colour, and the bare word
    prompts = [fill_template(TEMPLATES[0], describe("cross", c, s)) for s in STYLES for c in COLOURS]
    prompts += ["cross", "a cross"]
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "esd",
                     {"train_method": "noxattn", "prompts": prompts, "iterations": 150, "lr": 1e-4,
                      "ddim_steps": 20})
    assert v["acc_after"] <= v["acc_before"] - 0.3, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "esd"
    params = {"iterations": 1, "ddim_steps": 2, "lr": 1e-3}
