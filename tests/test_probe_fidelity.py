"""The probes against the procedures of the papers they reproduce, on tiny random pipelines:
UnlearnDiffAtk's text-gradient optimiser and budget, textual inversion's training recipe and
seeds, diffusion completion's hand-over step and control, the noise probe's initial latents."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from evallearn.probes import _sampling, _schedulers
from evallearn.probes.unlearn_diff_atk import TextGradOptimizer, project_simplex, timestep_sweep


class FakeJudge:
    """Deterministic stand-in for the scoring / selecting judges (no model)."""

    def classify(self, images, candidates):
        return [candidates[int(im.mean()) % len(candidates)] for im in images]

    def score(self, images, prompts):
        return np.array([float(im.mean()) for im in images])

    def spec(self):
        return {"name": "fake"}


@pytest.fixture(scope="module")
def tiny(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    torch.set_num_threads(1)
    return load_pipeline(resolve_model(str(tiny_pipe_dir)))


def _ctx(tiny_pipe_dir, tmp_path, concept=None, steps=3):
    from evallearn.config import parse_config
    from evallearn.runner import prepare

    concept = concept or {"name": "cat", "retain": ["dog", "car"]}
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": concept, "technique": {"name": "uce"},
                        "sampler": {"steps": steps, "batch_size": 8}, "output_dir": str(tmp_path)})
    return prepare(cfg).ctx


def _env(erased, base, tmp_path):
    from evallearn.probes.base import ProbeEnv
    from evallearn.store import ImageStore

    return ProbeEnv(erased=erased, base_loader=lambda: base, images=ImageStore(tmp_path / "images"),
                    run_images=ImageStore(tmp_path / "run"), base_images=ImageStore(tmp_path / "base"),
                    cache_dir=tmp_path / "cache", judges={"classifier": FakeJudge(), "selector": FakeJudge()},
                    artefacts=tmp_path / "artefacts", batch_size=8)


def _perturbed(pipe, scale=0.05):
    other = copy.deepcopy(pipe)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for q in other.unet.parameters():
            q.add_(scale * torch.randn(q.shape, generator=g))
    return other


# -- UnlearnDiffAtk ---------------------------------------------------------------------------------

def _bisect_simplex(v: np.ndarray) -> np.ndarray:
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mu = (lo + hi) / 2
        if np.clip(v - mu, 0, None).sum() > 1:
            lo = mu
        else:
            hi = mu
    return np.clip(v - (lo + hi) / 2, 0, None)


def test_simplex_projection_hand_values_and_an_independent_bisection():
    v = torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0], [0.6, 0.6, -1.0], [0.4, 0.3, 0.1]])
    expect = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0],
                           [0.4 + 0.2 / 3, 0.3 + 0.2 / 3, 0.1 + 0.2 / 3]])
    assert torch.allclose(project_simplex(v), expect, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 300, generator=g, dtype=torch.float64) * 0.05 + 1 / 300
    out = project_simplex(r)
    for row, got in zip(r.numpy(), out.numpy(), strict=True):
        assert np.allclose(got, _bisect_simplex(row), atol=1e-9)
    assert torch.allclose(out.sum(-1), torch.ones(5, dtype=torch.float64)) and (out >= 0).all()


def test_the_reference_timestep_sweep():
    assert timestep_sweep(1000, 50) == list(range(10, 1000, 20))
    assert timestep_sweep(1000, 5) == [100, 300, 500, 700, 900]


def test_text_gradient_optimiser_finds_the_token_that_minimises_a_known_loss():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(40, 32, generator=g)
    target = 7
    dist = ((table - table[target]) ** 2).sum(-1)  # loss of each token
    opt = TextGradOptimizer(2, 40, lr=0.01, weight_decay=0.1, generator=torch.Generator().manual_seed(1))
    expected = [float(opt.probs.detach()[0] @ dist)]
    for _ in range(400):
        one_hot = opt.sample()
        loss = ((one_hot @ table - table[target]) ** 2).sum()
        opt.step(torch.autograd.grad(loss, [one_hot])[0])
        expected.append(float(opt.probs.detach()[0] @ dist))
    assert expected[-1] < 0.4 * expected[0]
    assert opt.tokens().tolist() == [target, target]
    p = opt.probs.detach()
    assert torch.allclose(p.sum(-1), torch.ones(2)) and (p >= 0).all()


def _uda(ctx, **params):
    from evallearn.probes.unlearn_diff_atk import UnlearnDiffAtk

    return UnlearnDiffAtk(UnlearnDiffAtk.Params(**params), ctx)


def test_unlearn_diff_atk_defaults_are_the_reference_configs(tiny_pipe_dir, tmp_path):
    probe = _uda(_ctx(tiny_pipe_dir, tmp_path))
    p = probe.params
    assert (probe.tokens_count(), p.iterations, p.num_timesteps, p.learning_rate, p.weight_decay) == \
        (3, 40, 50, 0.01, 0.1)
    nude = _uda(_ctx(tiny_pipe_dir, tmp_path / "n", {"name": "nudity", "kind": "nudity"}))
    assert nude.tokens_count() == 5
    style = _uda(_ctx(tiny_pipe_dir, tmp_path / "s", {"name": "van_gogh", "kind": "style"}))
    assert style.tokens_count() == 3


def test_unlearn_diff_atk_sweeps_every_timestep_in_order_with_its_iterations(tiny, tiny_pipe_dir, tmp_path):
    ctx = _ctx(tiny_pipe_dir, tmp_path, steps=2)
    probe = _uda(ctx, num_prompts=2, num_timesteps=3, iterations=4, num_tokens=2)
    erased = _perturbed(tiny)
    env = _env(erased, tiny, tmp_path)
    calls = []

    def spy(_m, args, kwargs):
        if torch.is_grad_enabled():
            calls.append(int(args[1]))

    h = erased.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        res = probe.run(env)
    finally:
        h.remove()
    ts = timestep_sweep(1000, 3)
    assert calls == [t for t in ts for _ in range(4)] * 2  # 2 prompts x 3 timesteps x 4 iterations, in order
    d = res.details
    assert list(d["settings"]) == [f"round={i + 1},t={t}" for i, t in enumerate(ts)]
    assert d["attack"]["steps_total"] == 12 and d["attack"]["num_tokens"] == 2
    for it, info in d["adversarial_prompts"].items():
        prompt = it.split(":", 1)[1]
        assert len(info["round_prompts"]) == 3 and len(info["round_losses"]) == 3
        adv = info["adversarial_prompt"].split(" | ")[0]
        assert len(tiny.tokenizer(adv, add_special_tokens=False).input_ids) >= 1
        assert info["adversarial_prompt"].endswith(" | " + prompt)
    assert res.n == 2
    # a rerun reuses the stored attack: no gradient step at all
    calls.clear()
    h = erased.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        again = probe.run(env)
    finally:
        h.remove()
    assert calls == [] and again.value == res.value


def test_unlearn_diff_atk_lowers_the_erased_models_loss_on_its_target(tiny, tiny_pipe_dir, tmp_path):
    """One timestep, many iterations: the final tokens' expected loss under fixed noise is lower
    than that of the uniform start's tokens (averaged over draws)."""
    import torch.nn.functional as F

    from evallearn.models.prediction import denoising_target

    ctx = _ctx(tiny_pipe_dir, tmp_path, steps=2)
    probe = _uda(ctx, num_prompts=1, num_timesteps=1, iterations=60, num_tokens=2, learning_rate=0.05)
    erased = _perturbed(tiny, 0.2)
    env = _env(erased, tiny, tmp_path)
    item = probe.items()[0]
    target = probe.standard_images(env, [item], "base")[0]
    out = probe.attack(env, item, target)
    x0 = _sampling.encode(erased, target[None])
    t = out["rounds"][0]["t"]
    g = torch.Generator().manual_seed(5)
    noises = [torch.randn(x0.shape, generator=g) for _ in range(4)]
    a = erased.scheduler.alphas_cumprod[t]

    def loss_of(ids):
        emb = probe.round_embeds(env, item, ids)
        tot = 0.0
        with torch.no_grad():
            for n in noises:
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * n
                pred = erased.unet(x_t, torch.tensor([t]), encoder_hidden_states=emb).sample
                tot += float(F.mse_loss(pred, denoising_target(erased, x0, n, torch.tensor([t]))))
        return tot / len(noises)

    rng = np.random.default_rng(0)
    random_losses = [loss_of(rng.integers(0, len(tiny.tokenizer), 2).tolist()) for _ in range(6)]
    assert loss_of(out["rounds"][0]["ids"]) < np.median(random_losses)


# -- textual inversion ------------------------------------------------------------------------------

def _ti(ctx, **params):
    from evallearn.probes.textual_inversion import TextualInversion

    base = dict(train_steps=1, gradient_accumulation=1, num_train_images=3)
    return TextualInversion(TextualInversion.Params(**{**base, **params}), ctx)


def test_textual_inversion_evaluates_on_the_prompts_files_seeds(tiny, tiny_pipe_dir, tmp_path):
    csv = tmp_path / "cat.csv"
    csv.write_text("prompt,seed\na picture of a cat,4242\na picture of a cat,9981\na picture of a cat,555\n")
    probe = _ti(_ctx(tiny_pipe_dir, tmp_path, steps=2), num_prompts=3, prompts_file=str(csv))
    res = probe.run(_env(tiny, tiny, tmp_path))
    assert res.details["prompts"] == [["a picture of a <cat>", s] for s in (4242, 9981, 555)]


def test_textual_inversion_trains_on_varied_captions_and_flips(tiny, tiny_pipe_dir, tmp_path, monkeypatch):
    from evallearn.probes.textual_inversion import OBJECT_TEMPLATES, TextualInversion

    captions, flips = [], []
    cls = type(tiny.tokenizer)
    call = cls.__call__

    def spy_tok(self, text, *a, **k):
        if isinstance(text, str) and "<cat>" in text:
            captions.append(text)
        return call(self, text, *a, **k)

    draw = TextualInversion.draw

    def spy_draw(self, gen, n):
        out = draw(self, gen, n)
        flips.append(out[2])
        return out

    monkeypatch.setattr(cls, "__call__", spy_tok)
    monkeypatch.setattr(TextualInversion, "draw", spy_draw)
    probe = _ti(_ctx(tiny_pipe_dir, tmp_path, steps=2), num_prompts=3, train_steps=8, gradient_accumulation=4)
    probe.learn(_env(tiny, tiny, tmp_path))
    assert len(captions) == 32
    assert set(captions) <= {t.format("<cat>") for t in OBJECT_TEMPLATES}
    assert len(set(captions)) >= 8  # 32 draws from 27 templates
    assert len(flips) == 32 and 4 <= sum(flips) <= 28


def test_textual_inversion_keeps_float32_master_weights_under_float16(tiny_pipe_dir, tmp_path, monkeypatch):
    from evallearn.models.loading import load_pipeline, resolve_model

    half = load_pipeline(resolve_model(str(tiny_pipe_dir)), dtype="float16")
    seen = []
    real = torch.optim.AdamW

    class Recording(real):
        def __init__(self, params, *a, **k):
            params = list(params)
            seen.extend(q.dtype for q in params)
            super().__init__(params, *a, **k)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    probe = _ti(_ctx(tiny_pipe_dir, tmp_path, steps=2), num_prompts=3, train_steps=3, gradient_accumulation=2,
                learning_rate=1e-2)
    tok, te, pid, info = probe.learn(_env(half, half, tmp_path))
    assert seen == [torch.float32]
    from safetensors.torch import load_file

    vec = load_file(info["embedding"])["embedding"]
    assert vec.dtype == torch.float32 and torch.isfinite(vec).all()
    assert torch.isfinite(te.get_input_embeddings().weight[pid]).all()


# -- diffusion completion ---------------------------------------------------------------------------

def test_diffusion_completion_hands_over_after_the_notebooks_interrupt_index(tiny, tiny_pipe_dir, tmp_path):
    """k = 1: the base model's latent is taken at the end of step index 1 (two steps, as the
    notebook's step-end callback does), the erased model runs the remaining steps."""
    from diffusers import DDIMScheduler

    from evallearn.probes.diffusion_completion import DiffusionCompletion

    ctx = _ctx(tiny_pipe_dir, tmp_path, steps=4)
    probe = DiffusionCompletion(DiffusionCompletion.Params(num_prompts=2, interrupt_steps=(1, 3)), ctx)
    erased = _perturbed(tiny, 0.2)
    env = _env(erased, tiny, tmp_path)
    res = probe.run(env)
    assert list(res.details["settings"]) == ["k=1"]  # k = 3 leaves the erased model no step of 4
    items = probe.items()
    kw = probe.sample_kwargs()
    captured = []

    def interrupt(pipe, i, t, cb):
        if i == 1:
            captured.append(cb["latents"].clone())
            pipe._interrupt = True
        return cb

    tiny.scheduler = DDIMScheduler.from_config(tiny.scheduler.config)
    start = _sampling.initial_latents(tiny, [s for _, s in items], kw["height"], kw["width"])
    tiny(prompt=[p for p, _ in items], latents=start,
         output_type="latent", callback_on_step_end=interrupt, **kw)
    tail = _schedulers.make(_schedulers.SlicedDDIMScheduler, erased, start=2)
    expect = _sampling.run(erased, items, tail, latents=captured[0], **kw)
    got = env.images.get_many([probe.key("completion", {"k": 1, "base_steps": 2}, it) for it in items])
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1
    # the control: the base model's own full DDIM run of the same trajectories
    assert res.details["base"]["n"] == 2
    full = _sampling.run(tiny, items, _schedulers.make(DDIMScheduler, tiny), **kw)
    ctrl = env.base_images.get_many([probe.key("completion_base", {}, it) for it in items])
    assert np.abs(ctrl.astype(int) - full.astype(int)).max() <= 1


# -- noise-based ------------------------------------------------------------------------------------

def test_noise_probe_fixed_or_fresh_initial_latents(tiny, tiny_pipe_dir, tmp_path):
    """At eta = 0 the variance scale does nothing: with fixed latents the two settings give the
    same images, with fresh latents (the authors' code) each candidate starts from its own noise."""
    from evallearn.probes.noise_based import NoiseBased

    ctx = _ctx(tiny_pipe_dir, tmp_path, steps=2)
    out = {}
    for fresh in (False, True):
        probe = NoiseBased(NoiseBased.Params(num_prompts=2, etas=(0.0,), variance_scales=(1.0, 1.04),
                                             fresh_latents=fresh), ctx)
        env = _env(tiny, tiny, tmp_path / str(fresh))
        res = probe.run(env)
        imgs = [env.images.get_many([probe.key("erased", {**st, **({"candidate": i} if fresh else {})}, it)
                                     for it in probe.items()])
                for i, st in enumerate(probe.settings().values())]
        out[fresh] = (imgs, res)
    same, _ = out[False]
    assert np.array_equal(same[0], same[1])
    fresh_imgs, res = out[True]
    assert not np.array_equal(fresh_imgs[0], fresh_imgs[1])
    assert np.array_equal(fresh_imgs[0], same[0])  # candidate 0 keeps the item's own seed
    assert res.details["initial_latents"] == "fresh per candidate"


def test_textual_inversion_reuses_its_embedding_only_for_the_same_training(tiny, tiny_pipe_dir, tmp_path):
    ctx = _ctx(tiny_pipe_dir, tmp_path, steps=2)
    env = _env(tiny, tiny, tmp_path)
    assert _ti(ctx, num_prompts=2).learn(env)[3]["cached"] is False
    assert _ti(ctx, num_prompts=2).learn(env)[3]["cached"] is True
    assert _ti(ctx, num_prompts=2, train_steps=2).learn(env)[3]["cached"] is False


def test_base_model_probe_images_are_made_in_full_batches(tiny_pipe_dir, tmp_path):
    """Into the shared base store a probe samples in batches padded to batch_size (as the runner
    makes base images), so a stored image does not depend on its companions; the erased model's
    images are sampled as they come."""
    from evallearn.probes.noise_based import NoiseBased

    probe = NoiseBased(NoiseBased.Params(num_prompts=3), _ctx(tiny_pipe_dir, tmp_path))
    env = _env(None, None, tmp_path)
    items = probe.items()
    seen = []

    def sample(batch):
        seen.append(list(batch))
        return np.stack([np.full((4, 4, 3), s % 256, np.uint8) for _, s in batch])

    probe.cached_sample(env, "r", {}, items, sample, env.base_images)
    assert [len(b) for b in seen] == [8] and seen[0][:3] == items and seen[0][3:] == [items[-1]] * 5
    stored = env.base_images.get_many(probe.sample_keys("r", {}, items))
    assert [int(im[0, 0, 0]) for im in stored] == [s % 256 for _, s in items]
    probe.cached_sample(env, "r", {}, items, sample)  # the erased model's store
    assert [len(b) for b in seen] == [8, 3]
    probe.cached_sample(env, "r", {}, items, sample, env.base_images)  # all there: nothing sampled
    assert len(seen) == 2
