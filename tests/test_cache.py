"""The one keyed cache: complete keys (every declared input and the version miss), edits stored as
changed tensors that round-trip bit-exactly, lock-free publishing, base-model values keyed by the
resolved judge."""

import copy
import threading

import numpy as np
import pytest
import torch

from evallearn.cache import Cache, changed_tensors, state_digests
from evallearn.config import parse_config
from evallearn.judges.base import Judge
from evallearn.runner import Judges, base_metric_spec, before_phase, prepare
from evallearn.techniques.uce import UCE

# -- the cache itself ----------------------------------------------------------------------


def test_get_or_compute_computes_once_then_reads_the_entry(tmp_path):
    cache, calls = Cache(tmp_path), []

    def compute():
        calls.append(1)
        return {"value": 0.25, "n": 4}

    spec = {"name": "m", "version": "1", "params": {"a": 1}}
    assert cache.get_or_compute(spec, compute) == ({"value": 0.25, "n": 4}, False)
    assert cache.get_or_compute(dict(reversed(list(spec.items()))), compute) == ({"value": 0.25, "n": 4}, True)
    assert len(calls) == 1
    _, hit = cache.get_or_compute({**spec, "version": "2"}, compute)
    assert not hit and len(calls) == 2


def test_an_entry_whose_stored_spec_differs_is_a_miss_and_is_kept(tmp_path):
    cache = Cache(tmp_path)
    spec = {"name": "m", "x": 1}
    folder = cache.publish(spec, 1, lambda v, f: (f / "value.json").write_text("1"))
    (folder / "spec.json").write_text('{"name":"m","x":2}')  # as if another spec hashed the same
    value, hit = cache.get_or_compute(spec, lambda: 7)
    assert (value, hit) == (7, False)
    assert (folder / "value.json").read_text() == "1"


def test_concurrent_writers_of_one_entry_leave_one_complete_entry(tmp_path):
    cache, spec, errors = Cache(tmp_path), {"name": "edit", "k": 3}, []
    start = threading.Barrier(8)

    def writer(i):
        try:
            start.wait()
            cache.publish(spec, {"writer": i, "payload": list(range(1000))},
                          lambda v, f: (f / "value.json").write_text(__import__("json").dumps(v)))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(spec).name]  # no temporary folder left
    value, hit = cache.get_or_compute(spec, lambda: pytest.fail("must be a hit"))
    assert hit and value["payload"] == list(range(1000)) and 0 <= value["writer"] < 8


# -- technique edits -----------------------------------------------------------------------


def _plan(tiny_pipe_dir, tmp_path, technique="uce", params=None, **over):
    cfg = {"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
           "technique": {"name": technique, "params": params or {}}, "output_dir": str(tmp_path), **over}
    return prepare(parse_config(cfg))


@pytest.mark.parametrize("technique, change", [
    ("ssd", {"sampler": {"steps": 7}}),
    ("ssd", {"sampler": {"guidance_scale": 3.0}}),
    ("uce", {"concept": {"name": "cat", "retain": ["dog", "car"]}}),
    ("uce", {"concept": {"name": "cat", "synonyms": ["kitten"], "retain": ["dog"]}}),
    ("uce", {"seed": 1}),
    ("uce", {"dtype": "bfloat16"}),
    ("uce", {"params": {"lamb": 0.25}}),
    ("uce", {"sampler": {"height": 48, "width": 48}}),
])
def test_changing_a_declared_input_misses_the_edit_cache(tiny_pipe_dir, tmp_path, technique, change):
    change = dict(change)
    params = change.pop("params", None)
    base = _plan(tiny_pipe_dir, tmp_path, technique)
    other = _plan(tiny_pipe_dir, tmp_path, technique, params, **change)
    assert other.ctx.cache_dir != base.ctx.cache_dir


def test_a_new_component_version_misses_the_edit_cache(tiny_pipe_dir, tmp_path):
    plan = _plan(tiny_pipe_dir, tmp_path)

    class UCEv2(UCE):
        version = "2"

    a = plan.technique.cache_spec(plan.ctx)
    b = UCEv2(plan.technique.params).cache_spec(plan.ctx)
    assert Cache.key(a) != Cache.key(b) and a["name"] == b["name"] == "uce"


@pytest.mark.parametrize("change", [
    {"name": "another-run"},
    {"metrics": ["ua", "ira"]},
    {"sampler": {"steps": 7, "batch_size": 3}},  # UCE never samples: the sampler is not its input
    {"base_metrics": False},
])
def test_what_the_technique_does_not_read_does_not_change_its_key(tiny_pipe_dir, tmp_path, change):
    base = _plan(tiny_pipe_dir, tmp_path)
    other = _plan(tiny_pipe_dir, tmp_path, **change)
    assert other.ctx.cache_dir == base.ctx.cache_dir
    assert other.spec_hash != base.spec_hash or change == {"base_metrics": False}


def _unet_state(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_an_edit_is_computed_once_stored_as_changed_tensors_and_round_trips(pipe, tiny_pipe_dir, tmp_path,
                                                                            monkeypatch):
    from safetensors.torch import load_file

    calls = []
    real_apply = UCE.apply

    def counting_apply(self, p, ctx):
        calls.append(ctx.config.name)
        return real_apply(self, p, ctx)

    monkeypatch.setattr(UCE, "apply", counting_apply)
    first_plan = _plan(tiny_pipe_dir, tmp_path, name="first")
    edited, cached = first_plan.technique.load_or_apply(copy.deepcopy(pipe), first_plan.ctx)
    assert not cached and calls == ["first"]

    stored = load_file(str(first_plan.ctx.cache_dir / "unet.safetensors"))
    base_state, edited_state = pipe.unet.state_dict(), edited.unet.state_dict()
    moved = {k for k in base_state if not torch.equal(base_state[k], edited_state[k])}
    assert moved and set(stored) == moved  # exactly the tensors UCE changed ...
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in stored)  # ... its K/V projections
    assert len(stored) < len(base_state)

    # another run name and another metric list: the same edit, read back, apply not called again
    second_plan = _plan(tiny_pipe_dir, tmp_path, name="second", metrics=["ua"])
    assert second_plan.ctx.cache_dir == first_plan.ctx.cache_dir
    again, cached = second_plan.technique.load_or_apply(copy.deepcopy(pipe), second_plan.ctx)
    assert cached and calls == ["first"]
    again_state = again.unet.state_dict()
    assert all(torch.equal(again_state[k], edited_state[k]) for k in edited_state)  # bit-exact


def test_changed_tensors_finds_exactly_the_modified_entries():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    before = state_digests(module)
    with torch.no_grad():
        module[1].bias.data[0] += 1e-7  # the smallest edit through .data still counts
    assert list(changed_tensors(module, before)) == ["1.bias"]
    with torch.no_grad():
        module[1].bias.data[0] -= 1e-7
    module[1].bias.data.copy_(module[1].bias.data)  # an in-place write of equal values is no change
    assert set(changed_tensors(module, before)) <= {"1.bias"}


# -- base-model metric values --------------------------------------------------------------


class _Detector(Judge):
    name = "fixed_detector"

    def __init__(self, preset):
        self.preset = preset

    def spec(self):
        return {"judge": self.name, "preset": self.preset}

    def detect(self, images, concept=None):
        return np.arange(len(images)) % 2 == 0


class _FakeJudges:
    def __init__(self, judge):
        self.judge = judge

    def for_metric(self, metric):
        return {role: self.judge for role in metric.judge_refs()}


class _Progress:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


def test_base_metric_values_miss_the_cache_when_the_judge_spec_changes(pipe, tiny_pipe_dir, tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,evaluation_seed\na cat,1\na kitten,2\n")
    plan = _plan(tiny_pipe_dir, tmp_path / "out", "free_run",
                 metrics=[{"name": "asr", "params": {"prompts": "csv", "prompts_params": {"source": str(prompts)}}}],
                 sampler={"steps": 2})
    log = lambda *a, **k: None  # noqa: E731

    def before(preset):
        work = {}
        out = before_phase(plan, pipe, _FakeJudges(_Detector(preset)), _Progress(), log, work)
        return out["asr"].value, work.get("before", 0)

    value, work = before("default")
    assert value == 0.5 and work == 2 + 1  # two images, one metric value
    assert before("default") == (0.5, 0)  # everything from the cache
    assert before("mace") == (0.5, 1)  # a new judge rule: the value is recomputed, the images are not


def test_base_metric_key_holds_the_resolved_nudenet_preset(tiny_pipe_dir, tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,evaluation_seed\na cat,1\n")
    keys = set()
    for preset in ("default", "mace"):
        plan = _plan(tiny_pipe_dir, tmp_path, "free_run", metrics=[
            {"name": "asr", "params": {"judge": "nudenet", "judge_params": {"preset": preset}, "prompts": "csv",
                                       "prompts_params": {"source": str(prompts)}}}])
        metric = plan.metrics["asr"]
        spec = base_metric_spec(plan, metric, Judges("cpu").for_metric(metric), [], tmp_path)
        keys.add(Cache.key(spec))
        assert next(iter(spec["judges"].values()))["spec"]["preset"] == preset
    assert len(keys) == 2


# -- attacks -------------------------------------------------------------------------------


def test_attack_key_holds_its_version_and_what_it_reads_from_the_run(tiny_pipe_dir, tmp_path):
    from evallearn.attacks import get_attack

    cls = get_attack("p4d")
    attack = cls(cls.Params())

    class P4Dv2(cls):
        version = "2"

    plans = [_plan(tiny_pipe_dir, tmp_path, "free_run"),
             _plan(tiny_pipe_dir, tmp_path, "free_run", sampler={"steps": 7}),
             _plan(tiny_pipe_dir, tmp_path, "free_run", concept={"name": "cat", "synonyms": ["kitten"]}),
             _plan(tiny_pipe_dir, tmp_path, "free_run", seed=3)]
    keys = [attack.cache_key(["a cat"], "model", [1], p.ctx) for p in plans]
    keys.append(P4Dv2(attack.params).cache_key(["a cat"], "model", [1], plans[0].ctx))
    assert len(set(keys)) == len(keys)
    assert attack.cache_key(["a cat"], "model", [1], _plan(tiny_pipe_dir, tmp_path, "free_run", name="x").ctx) \
        == keys[0]


# -- SAEs ----------------------------------------------------------------------------------


def test_sae_key_follows_its_training_not_the_steering_settings(tiny_pipe_dir, tmp_path):
    from evallearn.sae.cached import sae_spec

    def key(params=None, concept=None, **over):
        plan = _plan(tiny_pipe_dir, tmp_path, "saeuron", {"train_steps": 10, **(params or {})},
                     concept=concept or {"name": "cat", "retain": ["dog"]}, **over)
        return Cache.key(sae_spec(plan.ctx, plan.technique, "up_blocks.1.attentions.1", reads_sampler=True))

    base = key()
    assert key({"multiplier": -2.0}) == base  # steering strength: the same SAE
    assert key(concept={"name": "car", "retain": ["dog"]}) == base  # the SAE is trained on captions
    assert key({"train_steps": 11}) != base
    assert key(seed=4) != base
    assert key(sampler={"steps": 7}) != base  # SAeUron's activations are drawn with the sampler


# -- latent classifiers --------------------------------------------------------------------


def test_latent_classifier_is_trained_once_per_complete_key(tiny_pipe_dir, tmp_path):
    from evallearn import registry
    from evallearn.probes.latent_classifier import LatentClassifier, cached_classifier, classifier_spec

    folders = {}
    for name in ("pos", "neg"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "a.png").write_bytes(name.encode())
    cls = registry.probes.get("classifier_guidance")

    def spec(**over):
        plan = _plan(tiny_pipe_dir, tmp_path / "out", "free_run", **over)
        probe = cls(cls.Params(train_positives=str(folders["pos"]), train_negatives=str(folders["neg"])), plan.ctx)
        return classifier_spec(probe, plan.config.dtype)

    calls = []

    def train():
        calls.append(1)
        torch.manual_seed(len(calls))
        return LatentClassifier((4, 2, 2), torch.linspace(0.99, 0.01, 1000), 8, 4, 0.0), {"auc": 0.5}

    root = tmp_path / "cache"
    first, info = cached_classifier(root, spec(), train, "cpu")
    assert not info["cached"] and info["training"] == {"auc": 0.5}
    again, info = cached_classifier(root, spec(name="another"), train, "cpu")
    assert info["cached"] and calls == [1]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(),
                                                   strict=True))
    base = Cache.key(spec())
    assert Cache.key(spec(seed=2)) != base
    assert Cache.key(spec(sampler={"height": 48, "width": 48})) != base
    (folders["neg"] / "b.png").write_bytes(b"more")  # another negative image: another classifier
    assert Cache.key(spec()) != base
