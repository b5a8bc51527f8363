import copy
from types import SimpleNamespace

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.runner import prepare
from evallearn.techniques import training as T
from evallearn.techniques.fewshot_unlearning import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    FewShotUnlearning,
    templates_for,
    text_encoder_filter,
    training_latents,
)

TINY = {"num_images": 2, "image_steps": 2, "epochs": 2, "batch_size": 2}


def plan_for(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                        "technique": {"name": "fewshot_unlearning", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def diffusion_loss(pipe, text_encoder, latents, prompt):
    """The UNet's denoising error on the images under ``text_encoder``, at fixed noise draws."""
    gen = torch.Generator().manual_seed(7)
    total = 0.0
    with torch.no_grad():
        cond = text_encoder(T.token_ids(pipe, [prompt] * len(latents)))[0]
        for _ in range(8):
            xt, noise, t = T.add_noise(pipe, latents, gen)
            total += torch.nn.functional.mse_loss(pipe.unet(xt, t, cond).sample, noise).item()
    return total / 8


def test_trains_the_mlps_and_the_last_self_attention_and_raises_the_loss(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, {**TINY, "lr": 1e-3})
    latents = training_latents(copy.deepcopy(pipe), plan.ctx, plan.technique.params, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8)
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    before = dict(pipe.text_encoder.named_parameters())
    changed = {n for n, p in edited.text_encoder.named_parameters() if not torch.equal(p, before[n])}
    last = len(pipe.text_encoder.text_model.encoder.layers if hasattr(pipe.text_encoder, "text_model")
               else pipe.text_encoder.encoder.layers) - 1
    expected = {n for n in before if "mlp.fc1" in n or "mlp.fc2" in n or f"layers.{last}.self_attn." in n}
    assert changed == expected and any("layers.0.mlp" in n for n in expected)
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), edited.unet.parameters(), strict=True))
    for prompt in ("a photo of a cat", "a rendering of a cat"):  # captions from the object templates
        assert diffusion_loss(pipe, edited.text_encoder, latents, prompt) > diffusion_loss(
            pipe, pipe.text_encoder, latents, prompt)


def test_one_step_is_an_adam_step_of_the_authors_settings(pipe, tiny_pipe_dir, tmp_path):
    """Adam's first step moves a weight by lr · g'/(|g'| + ε) with g' = g + wd · w: at most lr, and
    lr up to ε / |g'| where the gradient is not tiny."""
    lr = 1e-3
    plan = plan_for(tiny_pipe_dir, tmp_path, {**TINY, "num_images": 1, "epochs": 1, "lr": lr})
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    before = dict(pipe.text_encoder.named_parameters())
    steps = torch.cat([(p - before[n]).abs().flatten() for n, p in edited.text_encoder.named_parameters()
                       if "mlp.fc" in n])
    assert steps.max() <= lr * (1 + 1e-5)
    assert (steps > 0.9 * lr).float().mean() > 0.5  # an SGD step would scale with the gradient instead


def test_train_methods_select_the_authors_parameter_sets():
    names = ["text_model.encoder.layers.0.mlp.fc1.weight", "text_model.encoder.layers.0.self_attn.q_proj.weight",
             "text_model.encoder.layers.11.self_attn.k_proj.bias", "text_model.encoder.layers.11.mlp.fc2.bias",
             "text_model.embeddings.token_embedding.weight", "text_model.final_layer_norm.weight",
             "text_model.encoder.layers.11.layer_norm1.weight"]

    def kept(method):
        keep = text_encoder_filter(method, 12)
        return [i for i, n in enumerate(names) if keep(n)]

    assert kept("mlp-final-attn") == [0, 2, 3]
    assert kept("mlp-only") == [0, 3]
    assert kept("attn-only") == [1, 2]
    assert kept("mlp-attn") == [0, 1, 2, 3]
    assert kept("all") == list(range(len(names)))


def test_caption_templates_by_kind():
    p = FewShotUnlearning.Params()
    ctx = SimpleNamespace(concept=SimpleNamespace(kind="style"))
    assert templates_for(p, ctx) is STYLE_TEMPLATES and len(STYLE_TEMPLATES) == 19
    ctx.concept.kind = "object"
    assert templates_for(p, ctx) is OBJECT_TEMPLATES and len(OBJECT_TEMPLATES) == 27
    assert templates_for(FewShotUnlearning.Params(concept_type="style"), ctx) is STYLE_TEMPLATES


def test_defaults_are_the_authors():
    p = FewShotUnlearning.Params()
    assert (p.train_method, p.num_images, p.epochs, p.batch_size, p.lr, p.beta1, p.beta2, p.eps, p.weight_decay) == (
        "mlp-final-attn", 4, 4, 2, 1e-5, 0.9, 0.98, 1e-6, 1e-8)


@needs_toy
@opt_in
@pytest.mark.slow
@pytest.mark.parametrize("concept", ["cross", "red"])
def test_fewshot_unlearning_on_the_toy_world(tmp_path_factory, concept):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "fewshot_unlearning", TOY_PARAMS, concept=concept)
    assert v["acc_after"] <= 0.25, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


TOY_PARAMS = {"lr": 1e-3, "epochs": 20, "image_steps": 20, "image_guidance": 6.0}  # 100x lr, 5x epochs: see the docs


class TestContract(TechniqueContract):
    name = "fewshot_unlearning"
    params = {"num_images": 1, "image_steps": 1, "epochs": 1, "batch_size": 1, "lr": 1e-3}
