import numpy as np
import pytest
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.generation import Generator, GenRequest
from evallearn.runner import prepare
from evallearn.techniques.sld import DIFFUSERS_SAFETY_CONCEPT, PRESETS, SLD


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    return load_pipeline(resolve_model(str(tiny_pipe_dir)))


def _plan(model, tmp_path, params, **extra):
    cfg = parse_config({"model": str(model), "concept": {"name": "cat", "synonyms": ["kitten"], "retain": ["dog"]},
                        "technique": {"name": "sld", "params": params}, "output_dir": str(tmp_path), **extra})
    return prepare(cfg)


REQS = [GenRequest(p, s, steps=2, height=32, width=32) for p, s in [("a cat", 1), ("a red cat", 3)]]


def assert_batch_invariant(engine, reqs=REQS):
    batch = engine.run_batch(reqs)
    for i, req in enumerate(reqs):
        alone = engine.run_batch([req])[0]
        assert np.abs(alone.astype(int) - batch[i].astype(int)).max() <= 1
        assert (alone == batch[i]).mean() > 0.99
    return batch


def test_presets_are_the_papers():
    assert PRESETS["weak"] == (15, 200.0, 0.0, 0.0, 0.0)
    assert PRESETS["medium"] == (10, 1000.0, 0.01, 0.3, 0.4)
    assert PRESETS["strong"] == (7, 2000.0, 0.025, 0.5, 0.7)
    assert PRESETS["max"] == (0, 5000.0, 1.0, 0.5, 0.7)
    s = SLD(SLD.Params(preset="strong", threshold=0.5)).settings()
    assert (s["warmup_steps"], s["sld_guidance_scale"], s["threshold"]) == (7, 2000.0, 0.5)


def test_sld_changes_images_batch_invariantly_and_off_equals_the_base(pipe, tiny_pipe_dir, tmp_path):
    plan = _plan(tiny_pipe_dir, tmp_path, {"preset": "max", "safety_concept": "a cat"})
    sld = plan.technique.apply(pipe, plan.ctx)
    batch = assert_batch_invariant(Generator(sld))
    base = Generator(pipe).run_batch(REQS)
    assert np.abs(batch.astype(int) - base.astype(int)).mean() > 0.5
    # SLD disabled (s_S < 1) is exactly Stable Diffusion
    off = _plan(tiny_pipe_dir, tmp_path, {"sld_guidance_scale": 0.0}).technique.apply(pipe, plan.ctx)
    assert np.array_equal(Generator(off).run_batch(REQS), base)


#: the safety concept of the authors' SLDPipeline (ml-research/safe-latent-diffusion, sld/sld_pipeline.py)
AUTHORS_SAFETY_CONCEPT = ("hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily "
                          "fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, "
                          "child abuse, brutality, cruelty")


def test_default_safety_concept_is_the_authors_and_diffusers_wording_is_named(pipe, tiny_pipe_dir, tmp_path):
    from diffusers import StableDiffusionPipelineSafe

    plan = _plan(tiny_pipe_dir, tmp_path, {})
    assert plan.technique.apply(pipe, plan.ctx).safety_concept == AUTHORS_SAFETY_CONCEPT
    # diffusers' safe pipeline uses its own wording; ours names it for anyone who wants that behaviour
    parts = {k: pipe.components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    safe = StableDiffusionPipelineSafe(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    assert safe.safety_concept == DIFFUSERS_SAFETY_CONCEPT != AUTHORS_SAFETY_CONCEPT
    plan = _plan(tiny_pipe_dir, tmp_path, {"safety_concept": DIFFUSERS_SAFETY_CONCEPT})
    assert plan.technique.apply(pipe, plan.ctx).safety_concept == safe.safety_concept


def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path):
    for params, key in [({"preset": "extreme"}, "preset"), ({"mom_beta": 2}, "mom_beta")]:
        with pytest.raises(UserError) as e:
            _plan(tiny_pipe_dir, tmp_path, params)
        assert key in str(e.value) and "\n" not in str(e.value)


# -- toy world: erased concept down, the others kept ----------------------------------------------

from evallearn_toy import BELOW_BAR, meets_ground_truth_bar  # noqa: E402


def toy_available() -> bool:
    return meets_ground_truth_bar(("shape",))


needs_toy = pytest.mark.skipif(not toy_available(), reason=BELOW_BAR)


def toy_erasure(technique: dict, out_dir, concept: str = "cross", max_prompts: int = 16) -> dict:
    """Run the technique on the toy model with UA and IRA; return {metric: (before, after)}."""
    from evallearn.runner import run
    from evallearn_toy.concepts import toy_concept

    c = toy_concept(concept)
    cfg = parse_config({"name": technique["name"], "model": "toy", "technique": technique,
                        "concept": {"name": concept, "synonyms": list(c.synonyms), "retain": list(c.retain_concepts)},
                        "metrics": [{"name": "ua", "params": {"max_prompts": max_prompts}},
                                    {"name": "ira", "params": {"max_prompts": max_prompts}}],
                        "output_dir": str(out_dir), "sampler": {"batch_size": 64}})
    res = run(cfg)
    return {k: (v["before"]["value"], v["after"]["value"]) for k, v in res["metrics"].items()}


def assert_erased_and_kept(values: dict, min_gain: float = 0.2):
    ua_before, ua_after = values["ua"]
    ira_before, ira_after = values["ira"]
    assert ua_after >= ua_before + min_gain, values
    assert ira_after >= 0.85 * ira_before, values


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "toy_runs"


@needs_toy
@pytest.mark.slow
def test_sld_on_the_toy_world(toy_runs):
    values = toy_erasure({"name": "sld", "params": {"preset": "max", "concept_from_run": True}}, toy_runs)
    assert_erased_and_kept(values)


class TestContract(TechniqueContract):
    name = "sld"
    params = {"preset": "max", "safety_concept": "a cat"}
