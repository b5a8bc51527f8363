from types import SimpleNamespace

import pytest
import torch
from _finetune import opt_in
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.sae.capture import text_activations
from evallearn.sae.model import SAEConfig, TopKSAE
from evallearn.techniques.itd import ItD, deactivate, default_layer, prompt_mse, token_lengths, top_features

CORPUS = [f"a {c} {o}" for c in ("red", "blue", "big", "small") for o in ("cat", "dog", "car", "house")]


def identity_sae(k: int = 2) -> TopKSAE:
    """d = 2, two latents, W_enc = W_dec = I, no biases: z = TopK(ReLU(x))."""
    sae = TopKSAE(SAEConfig(d_in=2, n_latents=2, k=k))
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.eye(2))
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(torch.eye(2))
        sae.b_dec.zero_()
    return sae


def test_deactivation_and_the_classifier_error_by_hand():
    sae = identity_sae()
    h = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])  # one prompt, two tokens
    # feature 1 does not fire on token 1 (ReLU(-1) = 0): only the reconstruction error remains
    recon = deactivate(sae, h, torch.tensor([1]), -8.0)
    assert torch.equal(recon, torch.tensor([[[1.0, 2.0], [3.0, 0.0]]]))
    assert prompt_mse(recon, h, torch.tensor([2])).item() == pytest.approx((0 + (0 + 1) / 2) / 2)
    # feature 0 fires on token 1 (3 -> -24); the start token is never deactivated
    recon = deactivate(sae, h, torch.tensor([0]), -8.0)
    assert torch.equal(recon, torch.tensor([[[1.0, 2.0], [-24.0, 0.0]]]))
    assert prompt_mse(recon, h, torch.tensor([2])).item() == pytest.approx((0 + (27**2 + 1) / 2) / 2)
    assert prompt_mse(recon, h, torch.tensor([1])).item() == 0.0  # only the prompt's own tokens count


def test_top_features_skip_the_start_token_and_silent_features():
    sae = identity_sae()
    h = torch.tensor([[9.0, 9.0], [0.5, -1.0], [2.0, -3.0], [1.0, 7.0]])  # start, two tokens, padding
    assert top_features(sae, h, 3, 5) == {0}  # feature 1 never fires on tokens 1-2 (the start token is left out)
    assert top_features(sae, h, 4, 1) == {1}  # inside the length the last token counts: max 7 beats max 2
    assert top_features(sae, h, 4, 5) == {0, 1}


def test_token_lengths_count_up_to_the_first_end_token(pipe):
    ids = pipe.tokenizer(["a cat", "a red cat on a dog"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    assert token_lengths(ids, pipe.tokenizer.eos_token_id).tolist() == [4, 8]  # start + words + end
    assert token_lengths(torch.full((1, 5), 7), 49407).tolist() == [5]


def test_default_layer_is_the_papers_on_sd1():
    assert default_layer(12) == 8 and default_layer(3) == 2


def _plan(tiny_pipe_dir, tmp_path, **params):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog", "car"]},
                        "output_dir": str(tmp_path), "technique": {"name": "itd", "params": {
                            "train_prompts": str(corpus), "train_steps": 200, "train_batch_size": 256,
                            "train_latents": 128, "k": 4, "lr": 1e-3, **params}}})
    return prepare(cfg)


def test_flagged_prompts_get_the_deactivated_reconstruction_others_pass_through(pipe, tiny_pipe_dir, tmp_path):
    # the random tiny encoder barely tells "cat" from "dog"; contrast the concept with its template
    target, retain = ["a photo of a cat", "an image of a cat"], ["a photo of a", "an image of a"]
    plan = _plan(tiny_pipe_dir, tmp_path, prompts=target, retain_prompts=retain)
    out = plan.technique.apply(pipe, plan.ctx)
    sae, feats, layer = out.itd_sae, out.itd_features, out.itd_layer
    assert len(feats) and layer == 1
    # the threshold is 0.99 x the smallest error over the concept's prompts, at strength -8
    h = text_activations(pipe, target, layer)
    ids = pipe.tokenizer(target, padding="max_length", max_length=77, return_tensors="pt").input_ids
    errs = prompt_mse(deactivate(sae, h, feats, -8.0), h, token_lengths(ids, pipe.tokenizer.eos_token_id))
    assert out.itd_threshold == pytest.approx(0.99 * errs.min().item())
    # no feature a retain prompt ranks among its top ones is deactivated
    for p in retain:
        hr = text_activations(pipe, [p], layer)[0]
        n = int(token_lengths(pipe.tokenizer([p], return_tensors="pt").input_ids, pipe.tokenizer.eos_token_id)[0])
        assert not top_features(sae, hr, n, 128) & set(feats.tolist())
    prompts = [target[0], retain[0]]
    with torch.no_grad():
        cond, uncond = out.encode_prompt(prompts, "cpu", 1, True, ["", ""])
        base_cond, base_uncond = pipe.encode_prompt(prompts, "cpu", 1, True, ["", ""])
    assert not torch.allclose(cond[0], base_cond[0], atol=1e-3)  # the concept's prompt is filtered
    assert torch.equal(cond[1], base_cond[1])  # the other passes unchanged
    assert torch.equal(uncond, base_uncond)  # negatives are never filtered
    # what replaced the cat prompt's layer output is the deactivated reconstruction
    captured = []
    nxt = pipe.text_encoder.text_model.final_layer_norm if hasattr(pipe.text_encoder, "text_model") \
        else pipe.text_encoder.final_layer_norm
    handle = nxt.register_forward_pre_hook(lambda m, a: captured.append(a[0].clone()))
    try:
        with torch.no_grad():
            out.encode_prompt(prompts[:1], "cpu", 1, False)
    finally:
        handle.remove()
    h0 = text_activations(pipe, prompts[:1], layer)
    assert torch.allclose(captured[0], deactivate(sae, h0, feats, -8.0), atol=1e-5)


def test_settings_by_kind_follow_the_authors_scripts():
    def ctx(kind):
        return SimpleNamespace(concept=SimpleNamespace(kind=kind))

    assert ItD(ItD.Params()).settings(ctx("object")) == (128, -8.0)  # celebrity script
    assert ItD(ItD.Params(strength=-4.0)).settings(ctx("object")) == (128, -4.0)
    assert ItD(ItD.Params()).settings(ctx("style")) == (256, -6.0)  # style script: calibrated at -6
    assert ItD(ItD.Params(top_features=7, calibration_strength=-2.0)).settings(ctx("style")) == (7, -2.0)


def test_no_retain_prompts_is_a_one_line_error(pipe, tiny_pipe_dir, tmp_path):
    plan = _plan(tiny_pipe_dir, tmp_path, retain_prompts=[])
    with pytest.raises(UserError) as e:
        plan.technique.apply(pipe, plan.ctx)
    assert "retain" in str(e.value) and "\n" not in str(e.value)


def test_defaults_are_the_authors():
    p = ItD.Params()
    assert (p.strength, p.threshold_margin, p.k, p.train_latents, p.lr) == (-8.0, 0.01, 64, 524288, 1e-4)


@needs_toy
@opt_in  # training the toy SAE takes minutes on a CPU
@pytest.mark.slow
@pytest.mark.parametrize("concept", ["cross", "red"])
def test_itd_on_the_toy_world(tmp_path_factory, concept):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "itd", TOY_PARAMS, concept=concept)
    assert v["acc_after"] <= 0.25, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


# a toy-sized SAE (the defaults are the authors' SD 1.4 sizes): 64 latents per dimension, k = 8
TOY_PARAMS = {"train_num_prompts": 4000, "train_steps": 600, "train_batch_size": 2048, "train_latents": 4096, "k": 8,
              "lr": 4e-4}


class TestContract(TechniqueContract):
    name = "itd"
    params = {"train_steps": 2, "train_batch_size": 128, "train_num_prompts": 4, "train_latents": 64, "k": 4,
              "layer": 0}

    def technique_params(self, folder):
        (folder / "p.txt").write_text("a cat\na dog\na red car\na blue cat\n")
        return {**self.params, "train_prompts": str(folder / "p.txt")}
