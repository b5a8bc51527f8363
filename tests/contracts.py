"""Contract tests every technique inherits, in the manner of diffusers' ``PipelineTesterMixin``
(``tests/pipelines/test_pipelines_common.py``): a technique's test file adds

    class TestContract(TechniqueContract):
        name = "uce"
        params = {...}          # the cheapest parameters that run on the tiny random pipeline

and gets, on the tiny random pipeline (fixtures ``pipe`` and ``tiny_pipe_dir``):

- unknown parameters are refused with a one-line :class:`~evallearn.errors.UserError` naming the key;
- ``cache_spec`` holds the technique's name and ``version``, changes with every parameter and with
  the version, and does not change with the output folder;
- ``apply`` changes only the weights of the components named in ``edits`` (and some of them); an
  inference-time technique (``edits == ()``) changes no weight at all;
- the edit cache round trip: a second ``load_or_apply`` loads the stored tensors without calling
  ``apply`` and gives the first call's weights bit for bit; an inference-time technique stores nothing;
- a request gives the same image alone as in a batch (within one grey level, as
  ``tests/test_generation.py`` checks for the base pipeline).

The technique is applied once per class (fixture ``applied``); the tests read that result.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

#: the pipeline components whose weights are compared
COMPONENTS = ("unet", "text_encoder", "vae")
#: two requests of different prompts and seeds, small enough for the tiny pipeline
REQUESTS = (("a cat", 1), ("a red cat on a dog", 3))


def _digests(pipe) -> dict[str, dict[str, bytes]]:
    from evallearn.cache import state_digests

    return {name: state_digests(getattr(pipe, name)) for name in COMPONENTS}


def _changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


class TechniqueContract:
    #: the technique's registered name
    name: ClassVar[str]
    #: the cheapest parameters that make it run on the tiny pipeline
    params: ClassVar[dict[str, Any]] = {}
    concept: ClassVar[dict[str, Any]] = {"name": "cat", "synonyms": ["kitten"], "retain": ["dog", "car"]}
    sampler: ClassVar[dict[str, Any]] = {"steps": 2, "height": 16, "width": 16}
    #: request size of the batch-invariance check
    image_size: ClassVar[int] = 32

    def technique_params(self, folder: Path) -> dict[str, Any]:
        """The parameters; override when they name files (written into ``folder``)."""
        return dict(self.params)

    def plan(self, tiny_pipe_dir, folder: Path, params: dict[str, Any] | None = None):
        from evallearn.config import parse_config
        from evallearn.runner import prepare

        folder.mkdir(parents=True, exist_ok=True)
        params = self.technique_params(folder) if params is None else params
        cfg = parse_config({"model": str(tiny_pipe_dir), "concept": self.concept, "sampler": self.sampler,
                            "technique": {"name": self.name, "params": params}, "output_dir": str(folder / "runs")})
        return prepare(cfg)

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _one_thread(cls):
        # one torch thread: on a small shared CPU, more threads make the tiny UNet many times slower
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)

    @pytest.fixture(scope="class")
    @classmethod
    def applied(cls, pipe, tiny_pipe_dir, tmp_path_factory):
        """``(plan, base digests, result of load_or_apply, its digests)``, computed once per class."""
        folder = tmp_path_factory.mktemp(f"contract_{cls.name}")
        plan = cls.plan(cls(), tiny_pipe_dir, folder)
        before = _digests(pipe)
        out, hit = plan.technique.load_or_apply(copy.deepcopy(pipe), plan.ctx)
        assert not hit, "a fresh output folder cannot hold a cached edit"
        return plan, before, out, _digests(out)

    # -- parameters and the cache key -------------------------------------------------------
    def test_unknown_parameter_is_a_one_line_error(self, tiny_pipe_dir, tmp_path):
        from evallearn.errors import UserError

        with pytest.raises(UserError) as exc:
            self.plan(tiny_pipe_dir, tmp_path, {**self.technique_params(tmp_path), "no_such_param": 1})
        assert "no_such_param" in str(exc.value) and "\n" not in str(exc.value)

    def test_cache_spec_has_the_version_and_follows_every_parameter(self, tiny_pipe_dir, tmp_path):
        params = self.technique_params(tmp_path)
        plan = self.plan(tiny_pipe_dir, tmp_path / "a", params)
        t, ctx = plan.technique, plan.ctx
        spec = t.cache_spec(ctx)
        assert spec["name"] == self.name and spec["version"] == t.version
        other = self.plan(tiny_pipe_dir, tmp_path / "b", params)  # another output folder: the same key
        assert Path(other.config.output_dir) != Path(plan.config.output_dir)
        assert other.technique.cache_spec(other.ctx) == spec
        for field in type(t.params).model_fields:
            with warnings.catch_warnings():  # the stand-in value need not have the field's type
                warnings.simplefilter("ignore")
                other = type(t)(t.params.model_copy(update={field: "<another value>"})).cache_spec(ctx)
            assert other != spec, f"parameter '{field}' is not part of the cache key"
        bumped = type(t)(t.params)
        bumped.version = f"{t.version}+1"
        assert bumped.cache_spec(ctx) != spec

    # -- what apply changes -----------------------------------------------------------------
    def test_only_the_declared_components_change(self, pipe, applied):
        plan, before, out, after = applied
        edits = plan.technique.edits
        changed = {name: _changed(before[name], after[name]) for name in COMPONENTS}
        assert _digests(pipe) == before, "apply changed the pipeline it was given a copy of"
        for name in COMPONENTS:
            if name not in edits:
                assert not changed[name], f"'{name}' changed but is not in edits={edits}: {changed[name][:3]}"
        if edits:
            assert any(changed[name] for name in edits), f"no weight of {edits} changed"

    def test_cache_round_trip(self, pipe, applied, monkeypatch):
        plan, before, out, after = applied
        t = plan.technique
        again = type(t)(t.params)
        calls = []
        if t.edits:
            monkeypatch.setattr(again, "apply", lambda *a, **k: calls.append(1) or pytest.fail("apply was called"))
            loaded, hit = again.load_or_apply(copy.deepcopy(pipe), plan.ctx)
            assert hit and not calls
            assert _digests(loaded) == after  # bit for bit, every component
            stored = sorted(p.name for p in plan.ctx.cache_dir.glob("*.safetensors"))
            assert stored == sorted(f"{name}.safetensors" for name in t.edits)
        else:
            real = again.apply
            monkeypatch.setattr(again, "apply", lambda *a, **k: calls.append(1) or real(*a, **k))
            _, hit = again.load_or_apply(copy.deepcopy(pipe), plan.ctx)
            assert not hit and calls == [1]  # nothing to load: applied again, nothing stored
            assert not (Path(plan.config.output_dir) / "_techniques").exists()

    def test_a_request_gives_the_same_image_alone_or_in_a_batch(self, applied):
        from evallearn.generation import Generator, GenRequest

        plan, _, out, _ = applied
        s = self.image_size
        reqs = [GenRequest(p, seed, steps=2, height=s, width=s) for p, seed in REQUESTS]
        engine = Generator(out)
        batch = engine.run_batch(reqs)
        for i, req in enumerate(reqs):
            alone = engine.run_batch([req])[0]
            assert np.abs(alone.astype(int) - batch[i].astype(int)).max() <= 1
            assert (alone == batch[i]).mean() > 0.99
