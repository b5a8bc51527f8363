import numpy as np
import pytest
import torch
from contracts import TechniqueContract
from test_sld import REQS, assert_batch_invariant, assert_erased_and_kept, needs_toy, pipe, toy_erasure, toy_runs  # noqa: F401, F811

from evallearn.config import parse_config
from evallearn.generation import Generator
from evallearn.runner import prepare
from evallearn.sae.capture import text_activations


def test_steering_adds_the_concept_features_to_prompts_and_subtracts_from_negatives(pipe, tiny_pipe_dir, tmp_path):  # noqa: F811
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"a {c} {o}" for c in ("red", "blue", "big") for o in ("cat", "dog", "car")))
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat"}, "output_dir": str(tmp_path),
                        "technique": {"name": "concept_steerers", "params": {
                            "train_prompts": str(prompts), "train_steps": 20, "train_batch_size": 128,
                            "strength": -2.0, "layer": 0}}})
    plan = prepare(cfg)
    tp = plan.technique.apply(pipe, plan.ctx)
    assert tp.steering.shape == (77, 32) and tp.steering.abs().sum() > 0
    layer = tp.steer_layer
    with torch.no_grad():
        base = text_activations(pipe, ["a dog"], layer)[0]
        calls = []

        nxt = pipe.text_encoder.encoder.layers[layer + 1]  # the next layer sees the steered output
        handle = nxt.register_forward_pre_hook(lambda m, args: calls.append(args[0].clone()))
        try:
            tp.encode_prompt(["a dog"], "cpu", 1, True, [""])
        finally:
            handle.remove()
    assert torch.allclose(calls[0][0], base + tp.steering, atol=1e-5)
    assert torch.allclose(calls[1][0], text_activations(pipe, [""], layer)[0] - tp.steering, atol=1e-5)
    batch = assert_batch_invariant(Generator(tp))
    assert np.abs(batch.astype(int) - Generator(pipe).run_batch(REQS).astype(int)).mean() > 0.1


@needs_toy
@pytest.mark.slow
def test_concept_steerers_on_the_toy_world(toy_runs):  # noqa: F811
    assert_erased_and_kept(toy_erasure({"name": "concept_steerers", "params": {"train_steps": 500}}, toy_runs))


class TestContract(TechniqueContract):
    name = "concept_steerers"
    params = {"train_steps": 2, "train_batch_size": 128, "train_num_prompts": 4, "layer": 0}

    def technique_params(self, folder):
        (folder / "p.txt").write_text("a cat\na dog\na red car\na blue cat\n")
        return {**self.params, "train_prompts": str(folder / "p.txt")}
