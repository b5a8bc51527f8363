"""The toy trainer (``evallearn_toy.training``): what ``eval-learn toy train`` promises, checked on tiny
budgets — a run is a pure function of its seed, a resumed run continues exactly as an uninterrupted one,
the stages reproduce the recorded weights of the trainer before it was split into modules, the builders
rebuild the shipped architecture, the EMA's fused update is the per-parameter one, and the learning-rate
schedule has the documented shape."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from evallearn_toy import toy_classifier_dir, toy_pipeline_dir
from evallearn_toy.classifier import ToyClassifier
from evallearn_toy.render import render_dataset
from evallearn_toy.training import Budgets
from evallearn_toy.training.architecture import build_text_encoder, build_unet, build_vae
from evallearn_toy.training.ema import EMA
from evallearn_toy.training.stages import encode_latents, lr_factor, train_classifier, train_t2i, train_vae

#: (cosine of the weight change with a fixed random direction, its norm) per stage, recorded with the
#: single-module trainer (evallearn_toy/train.py before the split) by test_stages_reproduce_the_recorded_weights
RECORDED = {
    "classifier": (-0.0071029753294125616, 3.674862361791895),
    "vae": (-0.0013327668136536434, 1.4190110037334678),
    "unet": (-0.004403001802114764, 0.004022635698469687),
    "text_encoder": (0.0006081332636079556, 0.004815518667766263),
}


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
    assert lr_factor(0, b) == pytest.approx(1 / 200)
    assert lr_factor(99, b) == pytest.approx(0.5)
    assert lr_factor(300, b) == 1.0
    assert lr_factor(599, b) == 1.0  # the anneal starts at step 1000 - 400
    assert lr_factor(800, b) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(1000, b) == pytest.approx(0.0, abs=1e-12)
    # no anneal by default; a decay longer than the run anneals the whole run
    assert lr_factor(999, Budgets(unet_steps=1000)) == 1.0
    short = Budgets(unet_steps=10, lr_decay_steps=400)
    assert lr_factor(5, short) == pytest.approx(min(1.0, 6 / 200) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert np.isfinite(lr_factor(10, short))


# --------------------------------------------------------------------------- recorded weights


def _direction_cosine(final: dict, init: dict, seed: int) -> tuple[float, float]:
    """(cosine of the weight change with a fixed random direction, norm of the change): the
    cosine moves with every data or noise draw (Adam's first steps are ~lr·sign(grad), so the
    norm alone barely does), yet float round-off moves it by ~1e-7."""
    g = torch.Generator().manual_seed(seed)
    dot = norm2 = r2 = 0.0
    for k in sorted(final):
        if not final[k].is_floating_point():
            continue
        d = (final[k].double() - init[k].double()).flatten()
        r = torch.randn(d.shape, generator=g, dtype=torch.float64)
        dot, norm2, r2 = dot + float(d @ r), norm2 + float(d @ d), r2 + float(r @ r)
    return dot / math.sqrt(norm2 * r2), math.sqrt(norm2)


def _stage_fingerprints(tmp_path) -> dict[str, tuple[float, float]]:
    """Three classifier steps, three VAE steps and four text-to-image steps on 64 renders."""
    images, labels = render_dataset(64, 0)
    quiet = lambda _m: None  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        torch.manual_seed(0)
        init = ToyClassifier().state_dict()
        tinted = render_dataset(32, 0, tinted=True)
        clf = train_classifier(images, labels, 3, 0, batch_size=16, log=quiet, tinted=tinted)
        out["classifier"] = _direction_cosine(clf.state_dict(), init, 1)
        torch.manual_seed(0)
        init = build_vae().state_dict()
        vae = train_vae(images, 3, 0, batch_size=8, log=quiet)
        out["vae"] = _direction_cosine(vae.state_dict(), init, 2)
        budgets = Budgets(unet_steps=4, unet_batch=4, unet_channels=(8, 16, 16), checkpoint_every=4)
        torch.manual_seed(0)
        init_unet, init_text = build_unet((8, 16, 16)).state_dict(), build_text_encoder().state_dict()
        pipe = train_t2i(encode_latents(vae, images) * 0.5, labels, vae, None, budgets, 0, tmp_path, log=quiet)
        out["unet"] = _direction_cosine(pipe.unet.state_dict(), init_unet, 3)
        out["text_encoder"] = _direction_cosine(pipe.text_encoder.state_dict(), init_text, 4)
    finally:
        torch.set_num_threads(threads)
    return out


def test_stages_reproduce_the_recorded_weights(tmp_path):
    """:data:`RECORDED` came from the single-module trainer (evallearn_toy/train.py before it was split),
    whose weights the split code reproduces bit for bit; an intended change of the recipe prints the new
    values to paste there with EVALLEARN_RECORD_TOY_FINGERPRINT=1."""
    got = _stage_fingerprints(tmp_path)
    if os.environ.get("EVALLEARN_RECORD_TOY_FINGERPRINT") == "1":
        print(json.dumps(got, indent=1))
    assert set(got) == set(RECORDED)
    for stage, (cos, norm) in RECORDED.items():
        assert got[stage][0] == pytest.approx(cos, abs=1e-5), stage
        assert got[stage][1] == pytest.approx(norm, rel=1e-4), stage


# --------------------------------------------------------------------------- shipped architecture


def _shapes_of(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    (path,) = folder.glob("*.safetensors")
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _own_config(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


@pytest.mark.parametrize("name", ["unet", "vae", "text_encoder"])
def test_builders_rebuild_the_shipped_architecture(name):
    """A module built from the code (at the shipped UNet's saved widths) has the shipped weights'
    keys and shapes and the same saved config, so ``toy train`` retrains the model that ships."""
    folder = toy_pipeline_dir() / name
    saved = json.loads((folder / "config.json").read_text())
    if name == "unet":
        model = build_unet(tuple(saved["block_out_channels"]))
    else:
        model = build_vae() if name == "vae" else build_text_encoder()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _shapes_of(folder)
    if name == "text_encoder":
        mine = model.config.to_dict()
        for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
                  "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act"):
            assert mine[k] == saved[k], k
    else:
        mine = _own_config(model.config)
        saved = {k: v for k, v in saved.items() if not k.startswith("_") and k != "scaling_factor"}
        mine.pop("scaling_factor", None)
        assert mine == saved


def test_shipped_classifier_has_the_built_architecture():
    got = {k: tuple(v.shape) for k, v in ToyClassifier().state_dict().items()}
    assert got == _shapes_of(toy_classifier_dir())


def test_train_all_writes_loadable_artefacts_and_reuses_finished_stages(tmp_path):
    """The whole recipe (what ``eval-learn toy train`` runs) at budgets of two steps a stage."""
    from diffusers import StableDiffusionPipeline

    from evallearn_toy.training import train_all

    b = Budgets(n_train=200, n_tinted=100, classifier_steps=2, vae_steps=2, clip_steps=2, clip_more_steps=2,
                unet_steps=2, unet_batch=4, unet_channels=(8, 16, 16), checkpoint_every=2)
    lines: list[str] = []
    train_all(tmp_path, b, seed=0, threads=1, log=lines.append)
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert pipe.unet.config.block_out_channels == [8, 16, 16]
    assert ToyClassifier.load(tmp_path / "classifier") is not None and (tmp_path / "clip" / "config.json").is_file()
    assert json.loads((tmp_path / "budgets.json").read_text())["unet_steps"] == 2
    assert any("quick eval" in line for line in lines)
    # a rerun naming no stage loads every finished artefact instead of retraining it
    train_all(tmp_path, b, seed=0, stages=(), threads=1, log=lines.append)
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"render", "total"}
