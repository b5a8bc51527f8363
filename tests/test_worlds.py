"""Worlds: the extension point that resolves model refs, concepts, default judges and dataset
analogues, and the one resolved Concept every component reads."""

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from evallearn import registry
from evallearn.concept_sets import concept_prompts, retain_concepts
from evallearn.concepts import Concept, World, world_for, world_of
from evallearn.concepts.open_vocab import OpenVocabWorld
from evallearn.config import ConceptConfig, parse_config
from evallearn.context import RunContext
from evallearn.errors import UserError
from evallearn.metrics._judging import default_detector
from evallearn.models.loading import ModelInfo, resolve_model

SRC = Path(__file__).resolve().parents[1] / "src" / "evallearn"


def _ctx(model: ModelInfo, **concept) -> RunContext:
    cfg = parse_config({"model": model.ref, "concept": concept})
    return RunContext(cfg, model, cache_dir=Path("/nonexistent"))


def test_worlds_come_from_entry_points():
    assert {"open", "toy"} <= set(registry.worlds.names())
    assert isinstance(world_for("open"), OpenVocabWorld)
    assert world_for("toy") is world_for("toy")  # one instance per process


def test_the_toy_model_belongs_to_the_toy_world():
    info = resolve_model("toy")
    assert info.world == "toy" and "toy" in info.tags and info.default_guidance == 4.0
    assert world_of(info).name == "toy"
    # a model description without a world field is claimed by the tag its world gives
    assert world_of(SimpleNamespace(tags=frozenset({"sd1", "toy"}))).name == "toy"
    assert world_of(SimpleNamespace(tags=frozenset({"sd1"}))).name == "open"


def test_toy_concept_without_retain_resolves_to_the_other_shapes_for_every_reader():
    """One answer to "which concepts are kept?": techniques (ctx.concept.retain), metrics and
    probes (retain_concepts) and the results all read the world's resolved set."""
    ctx = _ctx(resolve_model("toy"), name="cross")
    c = ctx.concept
    assert c.world == "toy" and c.retain == ("circle", "square", "triangle") and c.anchor == "shape"
    assert retain_concepts(ctx) == ["circle", "square", "triangle"]
    assert all("cross" in p for p in c.target_prompts) and not any("cross" in p for p in c.synonym_prompts)
    assert c.retain_prompts and all(any(s in p for s in c.retain) for p in c.retain_prompts)
    # the config's retain wins
    ctx2 = _ctx(resolve_model("toy"), name="cross", retain=["circle"])
    assert ctx2.concept.retain == ("circle",) and retain_concepts(ctx2) == ["circle"]
    assert all("circle" in p for p in ctx2.concept.retain_prompts)


def test_open_world_concept_and_default_judges():
    model = ModelInfo(ref="x", path=Path("/x"), tags=frozenset({"sd1"}), pipeline_class="StableDiffusionPipeline",
                      default_size=512)
    ctx = _ctx(model, name="dog", synonyms=["puppy"], retain=["cat"])
    c = ctx.concept
    assert c == Concept(name="dog", kind="object", synonyms=("puppy",), retain=("cat",),
                        target_prompts=("a photo of a dog", "an image of a dog"),
                        synonym_prompts=("a photo of a puppy", "an image of a puppy"),
                        retain_prompts=("a photo of a cat", "an image of a cat"), world="open")
    assert concept_prompts(ctx, "cat", "target") == ["a photo of a cat", "an image of a cat"]
    assert default_detector(ctx) == "clip"
    assert default_detector(_ctx(model, name="nudity")) == "nudenet"
    assert default_detector(_ctx(model, name="violence", kind="violence")) == "q16"
    toy = _ctx(resolve_model("toy"), name="cross")
    assert default_detector(toy) == "toy_classifier"


def test_concept_spec_round_trips_and_is_in_the_run_hash(tmp_path):
    from evallearn.runner import prepare

    c = Concept(name="a", retain=("b",), target_prompts=("a photo of a",))
    assert Concept.from_spec(c.spec()) == c
    plan = prepare(parse_config({"model": "toy", "concept": {"name": "cross"}, "metrics": ["ira"],
                                 "output_dir": str(tmp_path)}))
    assert plan.ctx.concept.retain == ("circle", "square", "triangle")
    from evallearn.runner import run_hash

    other = replace(plan.ctx.concept, retain=("circle",))
    assert run_hash(plan.config, plan.model, other) != plan.spec_hash


def test_results_record_the_concept():
    from evallearn.results import RunResults

    assert RunResults.model_fields["concept"].default_factory() == {}


def test_probe_config_on_the_toy_model_uses_the_models_own_guidance():
    from evallearn.probes.cli import build_probe_config

    cfg = build_probe_config("cross", "toy", ["standard_prompt"])
    assert "guidance_scale" not in cfg["sampler"]  # prepare() fills in the toy model's 4.0
    assert cfg["concept"]["retain"] == ["circle", "square", "triangle"] and cfg["concept"]["kind"] == "object"
    with pytest.raises(UserError, match="not a concept of model 'toy'"):
        build_probe_config("dog", "toy", ["standard_prompt"])


class Colours(World):
    """A second world: two colours, owned model ref ``colours``."""

    model_tag = "colours"
    open_vocabulary = False

    def owns(self, ref):
        return ref == "colours"

    def resolve_model(self, ref):
        if ref != "colours":
            return None
        return ModelInfo(ref=ref, path=Path("/colours"), tags=frozenset({"colours"}), pipeline_class="Stub",
                         default_size=8, vae_factor=1, unet_levels=1, world="colours")

    def resolve_concept(self, cfg):
        other = "blue" if cfg.name == "red" else "red"
        return Concept(name=cfg.name, kind=cfg.kind, retain=tuple(cfg.retain) or (other,),
                       target_prompts=(cfg.name,), world="colours")

    def default_judge(self, role, concept):
        return "colour_judge"

    def dataset_analogue(self, dataset, concept):
        from evallearn.datasets.base import PromptRecord

        return [PromptRecord("red"), PromptRecord("blue")] if dataset == "p4d" else None


@pytest.fixture
def colours():
    registry.worlds.register("colours")(Colours)
    world_for.cache_clear()
    yield
    registry.worlds.unregister("colours")
    world_for.cache_clear()


def test_a_second_world_plugs_in_without_touching_the_core(colours):
    info = resolve_model("colours")
    assert info.world == "colours"
    ctx = _ctx(info, name="red")
    assert ctx.concept.retain == ("blue",) and retain_concepts(ctx) == ["blue"]
    assert default_detector(ctx) == "colour_judge"
    assert [r.prompt for r in registry.datasets.get("p4d")().load(ctx)] == ["red", "blue"]
    with pytest.raises(UserError, match="set `source`"):
        registry.datasets.get("i2p")().load(ctx)


def test_no_module_of_the_core_imports_the_toy_world_or_branches_on_it():
    """The toy world is reached through the worlds registry only; the one "toy" left in the core
    is the default ``model:`` setting."""
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"toyworld|evallearn_toy|is_toy|[\"']toy[\"']", line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert hits == ['config.py:157: model: str = "toy"'] or (
        len(hits) == 1 and hits[0].startswith("config.py:") and 'model: str = "toy"' in hits[0]), hits


def test_a_closed_world_rejects_concepts_it_does_not_define():
    with pytest.raises(UserError):
        world_for("toy").concept_prompts("dog", "target")
    assert world_for("toy").resolve_concept(ConceptConfig(name="dog")).retain == ()


def test_a_plugin_world_runs_eval_learn_end_to_end(tmp_path):
    """The colours world (tests/plugin_pkg: a dist-info with entry points, nothing in evallearn
    changed) owns ``model: colours``; ``eval-learn run`` resolves its concept, its judge and its
    retain set, and records them."""
    import json
    import os

    from helpers import eval_learn, write_config

    plugin = Path(__file__).resolve().parent / "plugin_pkg"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]))
    cfg = write_config(tmp_path / "c.yaml", name="colours", model="colours", concept={"name": "red"},
                       technique={"name": "free_run"}, metrics=["ua", "ira"], seed=0,
                       sampler={"steps": 2, "batch_size": 8}, output_dir=str(tmp_path / "runs"))
    res = eval_learn("run", cfg, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    (results,) = (tmp_path / "runs").glob("colours-*/results.json")
    r = json.loads(results.read_text())
    assert r["concept"]["world"] == "colours" and r["concept"]["retain"] == ["blue"]
    assert r["config"]["sampler"]["guidance_scale"] == 2.0  # the world's model's own guidance
    for key in ("ua", "ira"):
        m = r["metrics"][key]["after"]
        assert m["judges"]["classifier"]["judge"] == "colour_judge" and 0.0 <= m["value"] <= 1.0
    assert r["metrics"]["ira"]["after"]["n"] == 2  # one image per prompt of the retain colour
