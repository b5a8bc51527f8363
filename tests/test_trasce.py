import numpy as np
import pytest
import torch
from contracts import TechniqueContract
from test_sld import REQS, assert_batch_invariant, assert_erased_and_kept, needs_toy, pipe, toy_erasure, toy_runs  # noqa: F401, F811

from evallearn.config import parse_config
from evallearn.generation import Generator
from evallearn.runner import prepare


def _plan(model, tmp_path, params, kind="object"):
    cfg = parse_config({"model": str(model), "concept": {"name": "cat", "kind": kind, "synonyms": ["kitten"]},
                        "technique": {"name": "trasce", "params": params}, "output_dir": str(tmp_path)})
    return prepare(cfg)


def test_defaults_follow_the_authors_commands(tiny_pipe_dir, tmp_path):
    s = _plan(tiny_pipe_dir, tmp_path, {}).technique.settings(_plan(tiny_pipe_dir, tmp_path, {}).ctx)
    assert (s["concept_text"], s["loss_scale"], s["step_size"], s["sigma"]) == ("cat, kitten", 1.0, 1.0, 1.0)
    plan = _plan(tiny_pipe_dir, tmp_path, {"sigma": 3.0}, kind="style")
    s = plan.technique.settings(plan.ctx)
    assert (s["loss_scale"], s["sigma"]) == (1.0, 3.0)


def test_negative_guidance_formula_and_batch_invariance(pipe, tiny_pipe_dir, tmp_path):  # noqa: F811
    plan = _plan(tiny_pipe_dir, tmp_path, {"guidance_loss_scale": 0.0})
    tp = plan.technique.apply(pipe, plan.ctx)
    # with λ = 0 one step is exactly ε_∅ + w(ε_p − ε_n) and the latent is not moved
    lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond, uncond = tp.encode_prompt(["a dog"], "cpu", 1, True, [""])
    tp.scheduler.set_timesteps(3)
    t = tp.scheduler.timesteps[0]
    state = tp.setup_guidance(["a dog"], [""], cond, uncond, 6.0)
    with torch.no_grad():
        noise, out = tp.guided_noise(0, t, lat, cond, uncond, 6.0, state)
        e = pipe.unet(torch.cat([lat] * 3), t, encoder_hidden_states=torch.cat([uncond, cond, state["neg"]])).sample
    e_u, e_p, e_n = e.chunk(3)
    assert torch.allclose(noise, e_u + 6.0 * (e_p - e_n), atol=1e-5) and torch.equal(out, lat)
    # with the loss on, the latent moves, per sample
    steer = _plan(tiny_pipe_dir, tmp_path, {"guidance_loss_scale": 50.0}).technique.apply(pipe, plan.ctx)
    batch = assert_batch_invariant(Generator(steer))
    assert np.abs(batch.astype(int) - Generator(tp).run_batch(REQS).astype(int)).mean() > 0.1


@needs_toy
@pytest.mark.slow
def test_trasce_on_the_toy_world(toy_runs):  # noqa: F811
    assert_erased_and_kept(toy_erasure({"name": "trasce", "params": {}}, toy_runs))


class TestContract(TechniqueContract):
    name = "trasce"
