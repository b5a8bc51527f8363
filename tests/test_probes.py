"""Probe machinery on tiny random pipelines: scheduler subclasses against hand computations,
seeding, resume, selector != scorer, prompt sets, verdict, the command-line shortcut."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from evallearn.errors import UserError
from evallearn.probes import _schedulers
from evallearn.probes.verdict import diff_ci, verdict

WACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "wace_concepts"


SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                   set_alpha_to_one=False)
#: SD 2.x-style: v-prediction on a zero-terminal-SNR schedule with trailing timesteps
V_ZERO_SNR = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")


def _ddim(cls=DDIMScheduler, schedule=(("steps_offset", 1),), **attrs):
    s = cls(**SD_SCHEDULE, **dict(schedule))
    for k, v in attrs.items():
        setattr(s, k, v)
    s.set_timesteps(10)
    return s


def test_eta_ddim_matches_ddim_for_eta_le_1_and_stays_finite_above():
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    t = int(_ddim().timesteps[3])
    for eta in (0.0, 0.5, 1.0):
        ref = _ddim().step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        ours = _ddim(_schedulers.EtaDDIMScheduler).step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        assert torch.allclose(ref, ours, atol=1e-6)
    assert torch.isnan(_ddim().step(eps, t, x, eta=1.85, variance_noise=z).prev_sample).any()
    s1 = _ddim(_schedulers.EtaDDIMScheduler).step(eps, t, x, eta=1.85, variance_noise=z).prev_sample
    s2 = _ddim(_schedulers.EtaDDIMScheduler, variance_scale=2.0).step(eps, t, x, eta=1.85, variance_noise=z).prev_sample
    assert torch.isfinite(s1).all()
    # the variance scale multiplies exactly the noise term: s2 - s1 = (2 - 1) * sigma * z
    sch = _ddim()
    prev = t - 1000 // 10
    sigma = 1.85 * sch._get_variance(t, prev).sqrt()
    assert torch.allclose(s2 - s1, sigma * z, atol=1e-5)
    # the |.| guard: hand-computed direction coefficient
    a_t, a_p = sch.alphas_cumprod[t], sch.alphas_cumprod[prev]
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    expect = a_p.sqrt() * x0 + (1 - a_p - sigma**2).abs().sqrt() * eps + sigma * z
    assert torch.allclose(s1, expect, atol=1e-5)


def _vddim(cls=DDIMScheduler, **attrs):
    return _ddim(cls, tuple(V_ZERO_SNR.items()), **attrs)


def test_v_prediction_steps_match_ddim_and_guidance_acts_on_the_equivalent_eps():
    g = torch.Generator().manual_seed(2)
    x, v, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    for t in (int(_vddim().timesteps[0]), int(_vddim().timesteps[4])):  # t=999 has zero SNR
        for eta in (0.0, 1.0):
            ref = _vddim().step(v, t, x, eta=eta, variance_noise=z).prev_sample
            ours = _vddim(_schedulers.EtaDDIMScheduler).step(v, t, x, eta=eta, variance_noise=z).prev_sample
            assert torch.allclose(ref, ours, atol=1e-5)
    # guidance on a v-model: the same step as an epsilon model fed the equivalent eps, guided
    t = int(_vddim().timesteps[4])
    a = _vddim().alphas_cumprod[t]
    eps = a.sqrt() * v + (1 - a).sqrt() * x
    w = torch.randn(2 * 4 * 8 * 8 // 2, generator=g)
    clf = lambda lat, tt: lat.flatten(1) @ w  # noqa: E731
    kw = dict(classifier=clf, classifier_scale=3.0)
    v_step = _vddim(_schedulers.ClassifierGuidedDDIMScheduler, **kw).step(v, t, x).prev_sample
    e_sched = _schedulers.ClassifierGuidedDDIMScheduler.from_config(
        {**dict(_vddim().config), "prediction_type": "epsilon"})
    e_sched.classifier, e_sched.classifier_scale = clf, 3.0
    e_sched.set_timesteps(10)
    assert torch.allclose(v_step, e_sched.step(eps, t, x).prev_sample, atol=1e-4)
    assert not torch.allclose(v_step, _vddim(_schedulers.EtaDDIMScheduler).step(v, t, x).prev_sample, atol=1e-3)


def test_denoising_target_is_the_velocity_for_v_models():
    from evallearn.models.prediction import denoising_target

    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([10, 700])
    assert denoising_target(_ddim(), x0, noise, t) is noise
    s = _vddim()
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(denoising_target(s, x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)


def test_classifier_guidance_shifts_eps_by_the_log_sigmoid_gradient():
    w = torch.randn(4 * 8 * 8, generator=torch.Generator().manual_seed(1)) * 0.05

    def clf(x, t):
        return x.flatten(1) @ w

    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = int(_ddim().timesteps[2])
    guided = _ddim(_schedulers.ClassifierGuidedDDIMScheduler, classifier=clf, classifier_scale=30.0)
    out = guided.step(eps, t, x).prev_sample
    a_t = guided.alphas_cumprod[t]
    f = x.flatten(1) @ w
    grad = (torch.sigmoid(-f)[:, None] * w).view_as(x)  # d/dx log sigmoid(w.x)
    eps_hat = eps - 30.0 * (1 - a_t).sqrt() * grad
    ref = _ddim().step(eps_hat, t, x).prev_sample
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, _ddim().step(eps, t, x).prev_sample, atol=1e-3)


@pytest.fixture(scope="module")
def tiny(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    torch.set_num_threads(1)
    return load_pipeline(resolve_model(str(tiny_pipe_dir)))


@pytest.mark.slow
def test_sliced_schedules_compose_to_the_full_run_and_noise_probe_seeds_are_fixed(tiny):
    from evallearn.probes import _sampling

    kw = dict(num_inference_steps=6, guidance_scale=3.0, height=64, width=64)
    items = [("a cat", 3), ("a dog", 4)]
    full = _sampling.run(tiny, items, _schedulers.make(DDIMScheduler, tiny), output_type="latent", **kw)
    head = _sampling.run(tiny, items, _schedulers.make(_schedulers.SlicedDDIMScheduler, tiny, start=0, stop=2),
                         output_type="latent", **kw)
    tail = _sampling.run(tiny, items, _schedulers.make(_schedulers.SlicedDDIMScheduler, tiny, start=2),
                         latents=head, output_type="latent", **kw)
    assert torch.allclose(full, tail, atol=1e-4)
    restart = _sampling.run(tiny, items, _schedulers.make(DDIMScheduler, tiny), latents=head,
                            output_type="latent", **kw)
    assert not torch.allclose(full, restart, atol=1e-2)  # the reference's restart-from-999 bug differs
    # eta-DDIM: same (prompt, seed) -> same image; variance scale reaches the scheduler
    def eta(scale):
        return _sampling.run(tiny, items, _schedulers.make(_schedulers.EtaDDIMScheduler, tiny, variance_scale=scale),
                             eta=1.5, output_type="latent", **kw)
    a, b, c = eta(1.0), eta(1.0), eta(1.04)
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-4)
    # fixed initial latents are the standard generation's: eta = 0 equals the engine's DDIM image
    from evallearn.generation import Generator, GenRequest

    req = GenRequest("a cat", 3, steps=6, guidance_scale=3.0, height=64, width=64)
    std = Generator(tiny).run_batch([req])[0]
    ours = _sampling.run(tiny, items[:1], _schedulers.make(_schedulers.EtaDDIMScheduler, tiny), eta=0.0, **kw)[0]
    assert np.abs(std.astype(int) - ours.astype(int)).max() <= 1


def _cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path, probes):
    from evallearn.config import parse_config

    return parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog", "car"]},
                         "technique": {"name": "uce"}, "probes": probes, "sampler": {"steps": 3, "batch_size": 8},
                         "output_dir": str(tmp_path)})


def test_selector_must_differ_from_the_scoring_judge(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    from evallearn.runner import prepare

    same = {"judge": "clip", "judge_params": {"clip_model": "x"},
            "selector": "clip", "selector_params": {"clip_model": "x"}}
    with pytest.raises(UserError, match="selector"):
        prepare(_cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path, [{"name": "noise_based", "params": same}]))
    with pytest.raises(UserError, match="probes\\[0\\].params.etas"):
        prepare(_cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path, [{"name": "noise_based", "params": {"etas": []}}]))


@pytest.mark.slow
def test_probe_run_resumes_from_its_cache_and_reports_settings(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    from evallearn.cli import run_and_report as run  # the commands' run: results.json, then report.html

    clip = str(tiny_clip_dir)
    j = {"judge": "clip", "judge_params": {"clip_model": clip}, "num_prompts": 2}
    probes = [{"name": "standard_prompt", "params": j},
              {"name": "noise_based", "params": {**j, "selector_params": {"clip_model": clip, "batch_size": 4},
                                                 "etas": [1.0, 1.7], "variance_scales": [1.0]}},
              {"name": "diffusion_completion", "params": {**j, "selector_params": {"clip_model": clip, "batch_size": 4},
                                                          "interrupt_steps": [1]}}]
    cfg = _cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path, probes)
    first = run(cfg)
    assert first["probes"]["results"]["noise_based"]["before"] is None  # a sweep runs no base model
    nb = first["probes"]["results"]["noise_based"]["after"]
    assert set(nb["details"]["settings"]) == {"eta=1,scale=1", "eta=1.7,scale=1"}
    assert nb["n"] == 2 and len(nb["details"]["chosen"]) == 2 and set(nb["judges"]) == {"classifier", "selector"}
    assert nb["judges"]["classifier"] != nb["judges"]["selector"]
    assert "verdict" in first["probes"] and first["probes"]["verdict"]["label"]
    # every erased-model image in the run's image store, by content key: standard prompt, noise
    # sweep, completion (no probe image folder of its own)
    pngs = sorted((Path(first["run"]["dir"]) / "images").glob("*.png"))
    assert len(pngs) == 2 + 2 * 2 + 2 and not (Path(first["run"]["dir"]) / "probes" / "images").exists()
    stamps = {p: p.stat().st_mtime_ns for p in pngs}
    for n, s in nb["details"]["settings"].items():  # selection-free values, as the verdict tests them
        assert len(s["per_item"]) == 2 and s["value"] == sum(s["per_item"]) / 2, n
    assert nb["chance"] == 1 / 3 and nb["scoring"]["candidates"] == ["cat", "dog", "car"]
    # per-image records as the metrics keep them: one per (setting, prompt) image, keyed by the
    # image's content address in the run's store; the value is the mean over the selector's picks
    recs = nb["samples"]
    assert len(recs) == 2 * 2 and {r["setting"] for r in recs} == set(nb["details"]["settings"])
    assert all({"value", "prompt", "seed", "key", "label", "chosen"} <= set(r) for r in recs)
    assert all(r["label"] in ("cat", "dog", "car") and r["value"] == float(r["label"] == "cat") for r in recs)
    assert all((Path(first["run"]["dir"]) / "images" / f"{r['key']}.png").is_file() for r in recs)
    picked = [r["value"] for r in recs if r["chosen"]]
    assert len(picked) == 2 and sum(picked) / 2 == nb["value"]
    # before/after as a metric has them: the standard prompt's base-model result is a probe result too
    entry = first["probes"]["results"]["standard_prompt"]
    std, base = entry["after"], entry["before"]
    assert set(base) == set(std) and "base" not in std["details"] and len(base["samples"]) == 2
    assert (base["probe"], base["kind"], base["scoring"]) == (std["probe"], std["kind"], std["scoring"])
    assert entry["delta"] == std["value"] - base["value"]
    assert [r["key"] for r in base["samples"]] == [r["key"] for r in std["samples"]]  # the same requests
    second = run(cfg)
    assert second["probes"]["results"] == first["probes"]["results"]
    # resumed from the cache: no probe image was made again
    assert {p: p.stat().st_mtime_ns for p in sorted(stamps)} == stamps
    assert len(list(pngs[0].parent.glob("*.png"))) == len(pngs)
    html = (Path(first["run"]["dir"]) / "report.html").read_text()
    assert "Verdict" in html and "noise_based" in html


def test_verdict_reads_probes_against_the_standard_prompt():
    def res(v, n=20, kind="recovery", base=None):
        items = [1.0] * int(round(v * n)) + [0.0] * (n - int(round(v * n)))
        d = {"per_item": items}
        if base is not None:
            d["base"] = {"value": base, "per_item": [1.0] * int(base * n) + [0.0] * (n - int(base * n))}
        return {"value": v, "kind": kind, "details": d}

    avoid = verdict({"standard_prompt": res(0.1, base=0.95), "noise_based": res(0.8), "inpainting": res(0.15)})
    assert avoid["label"] == "guidance-based avoidance" and avoid["recovered_by"] == ["noise_based"]
    destroy = verdict({"standard_prompt": res(0.05, base=0.95), "noise_based": res(0.1)})
    assert destroy["label"].startswith("destruction") and not destroy["recovered_by"]
    kept = verdict({"standard_prompt": res(0.9, base=0.95), "noise_based": res(0.95)})
    assert kept["label"] == "not erased"
    d, lo, hi = diff_ci([1, 1, 1, 0], [0, 0, 0, 0])
    assert d == 0.75 and 0 < lo <= d <= hi <= 1


def test_wace_prompt_sets_and_template_placeholder(tmp_path):
    from evallearn.probes.prompts import WACE_CONCEPTS, read_prompt_file

    assert len(WACE_CONCEPTS) == 13 and sum(c.kind == "style" for c in WACE_CONCEPTS.values()) == 3
    assert WACE_CONCEPTS["chainsaw"].imagenet_index == 491
    assert WACE_CONCEPTS["english_springer_spaniel"].imagenet_index == 217
    if not WACE.is_dir():
        pytest.skip("the paper's prompt files are not here")
    seeds = None
    for key, c in WACE_CONCEPTS.items():
        rows = read_prompt_file(WACE / f"{key}.csv")
        assert len(rows) == 500
        template = "a painting in the style of {}" if c.kind == "style" else "a picture of a {}"
        assert {p for p, _ in rows} == {template.format(c.word)}, key  # our word/template = the paper's prompt
        s = [sd for _, sd in rows]
        assert seeds is None or s == seeds
        seeds = s


def test_probe_items_put_the_placeholder_by_template(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    from evallearn.config import parse_config
    from evallearn.runner import prepare

    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "garbage truck"}, "output_dir": str(tmp_path),
                        "probes": [{"name": "textual_inversion", "params": {"num_prompts": 4}}]})
    plan = prepare(cfg)
    from evallearn.probes.textual_inversion import TextualInversion

    probe = TextualInversion(TextualInversion.Params(num_prompts=4), plan.ctx)
    items = probe.items(word=probe.placeholder())
    assert [p for p, _ in items] == ["a picture of a <garbage-truck>"] * 4
    assert [s for _, s in items] == [s for _, s in probe.items()]
    if WACE.is_dir():
        p = TextualInversion(TextualInversion.Params(num_prompts=3, prompts_file=str(WACE / "garbage_truck.csv")),
                             plan.ctx)
        assert [s for _, s in p.items()] == [s for _, s in read(WACE / "garbage_truck.csv", 3)]


def read(path, n):
    from evallearn.probes.prompts import read_prompt_file, spread

    return spread(read_prompt_file(path), n)


def test_probe_command_builds_the_run_config(tmp_path, tiny_pipe_dir):
    from evallearn.probes.cli import build_probe_config

    cfg = build_probe_config("van_gogh", str(tiny_pipe_dir), ["noise_based", "classifier_guidance"])
    assert cfg["concept"] == {"name": "Van Gogh", "kind": "style", "retain": ["Picasso", "Andy Warhol"]}
    assert [p["name"] for p in cfg["probes"]] == ["standard_prompt", "noise_based", "classifier_guidance"]
    assert cfg["base_model"] == "CompVis/stable-diffusion-v1-4" and cfg["sampler"]["steps"] == 50
    assert cfg["sampler"]["guidance_scale"] == 7.5
    with pytest.raises(UserError, match="unknown probe 'noise'"):
        build_probe_config("airliner", str(tiny_pipe_dir), ["noise"])
    from typer.testing import CliRunner

    from evallearn.cli import app

    r = CliRunner().invoke(app, ["probe", "--concept", "airliner", "--model", str(tiny_pipe_dir), "--probes",
                                 "noise_based", "classifier_guidance", "--dry-run", "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    written = (tmp_path / "probe-airliner.yaml").read_text()
    assert "classifier_guidance" in written and "noise_based" in written


def test_latent_classifier_trains_saves_and_reloads(tiny, tmp_path):
    # learning quality needs a trained VAE (the toy world's); the tiny VAE is random, so this
    # checks the training loop, the validation bookkeeping and the safetensors round trip
    from evallearn.concepts import world_for
    from evallearn.probes.latent_classifier import (
        LatentClassifier,
        _roc_auc,
        train_latent_classifier,
    )

    def big(a):
        return np.repeat(np.repeat(a, 2, 1), 2, 2)

    pos, neg = world_for("toy").concept_images("circle", 8, 16)
    assert pos.shape == (8, 32, 32, 3) and neg.shape == (16, 32, 32, 3)
    clf, metrics = train_latent_classifier(tiny, big(pos), big(neg), epochs=2, batch_size=8)
    assert metrics["n_pos"] == 8 and metrics["best"]["epoch"] in (0, 1) and np.isfinite(metrics["best"]["val_loss"])
    clf.save(tmp_path / "clf", metrics)
    again = LatentClassifier.load(tmp_path / "clf")
    x, t = torch.randn(3, *clf.latent_shape), torch.tensor([5, 500, 990])
    with torch.no_grad():
        assert torch.allclose(clf(x, t), again(x, t))
    assert math.isclose(_roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.1, 0.85])), 0.75)


def test_probe_image_keys_are_content_addresses(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    """A probe image's key holds what determines the image (procedure, setting, the item's
    request), not the probe's other params: configs that differ in prompt count or judge share
    images; a setting, the sampler or another procedure gives another key."""
    from evallearn.generation import GenRequest
    from evallearn.probes.classifier_guidance import ClassifierGuidance
    from evallearn.probes.noise_based import NoiseBased
    from evallearn.runner import prepare

    ctx = prepare(_cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path, [])).ctx
    a = NoiseBased(NoiseBased.Params(num_prompts=2), ctx)
    b = NoiseBased(NoiseBased.Params(num_prompts=5, judge="clip"), ctx)
    item = a.items()[0]
    assert item == b.items()[0]
    st = {"eta": 1.0, "variance_scale": 1.0}
    assert a.key("erased", st, item) == b.key("erased", st, item)
    assert a.key("erased", st, item) != a.key("erased", {**st, "eta": 1.17}, item)
    assert a.key("erased", st, item) != NoiseBased(NoiseBased.Params(steps=5), ctx).key("erased", st, item)
    assert a.key("erased", st, item) != ClassifierGuidance(ClassifierGuidance.Params(), ctx).key("erased", st, item)
    # the plain generation of an item is the metrics' request for it (shared with their images)
    assert a.request(item) == GenRequest(item[0], item[1], steps=3, guidance_scale=ctx.config.sampler.guidance_scale,
                                         height=ctx.height, width=ctx.width, scheduler=ctx.config.sampler.scheduler)


def test_probe_result_key_follows_its_params_version_inputs_and_judges(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    """The probe result cache (cache.py, in the run directory): any declared input, the version, a
    param or a judge's spec changes the key; the output folder does not."""
    from evallearn.cache import Cache
    from evallearn.probes.noise_based import NoiseBased
    from evallearn.probes.phase import probe_spec
    from evallearn.runner import prepare

    class J:
        def __init__(self, name):
            self.name = name

        def spec(self):
            return {"name": self.name}

    judges = {"classifier": J("a"), "selector": J("b")}

    def key(ctx, params=None, cls=NoiseBased, js=judges):
        return Cache.key(probe_spec(cls(cls.Params(**(params or {})), ctx), js))

    ctx = prepare(_cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path, [])).ctx
    k = key(ctx)
    moved = prepare(_cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path / "elsewhere", [])).ctx
    assert key(moved) == k
    assert key(ctx, {"num_prompts": 3}) != k
    assert key(ctx, js={**judges, "classifier": J("c")}) != k

    class Newer(NoiseBased):
        version = "2"

    assert key(ctx, cls=Newer) != k
    from evallearn.config import parse_config

    for change in ({"seed": 1}, {"concept": {"name": "cat", "retain": ["dog"]}},
                   {"sampler": {"steps": 4, "batch_size": 8}}):
        other = parse_config({**_cfg(tiny_pipe_dir, tiny_clip_dir, tmp_path, []).model_dump(mode="json"), **change})
        assert key(prepare(other).ctx) != k, change
