"""Results that stay true: non-finite images are reported and never scored; a resumed run keeps
the compute cost of the attempt that did the work; the results table explains itself."""

import json
import re

import numpy as np
import pytest
from helpers import write_config
from rich.console import Console

from evallearn.errors import UserError

POISON = "dog"


def _config(tmp_path, tiny_pipe_dir, tiny_clip_dir):
    clip = {"clip_model": str(tiny_clip_dir), "images_per_prompt": 2}
    return write_config(
        tmp_path / "run.yaml", name="integrity", model=str(tiny_pipe_dir),
        technique={"name": "uce", "params": {"guide": " "}},
        concept={"name": "cat", "retain": [POISON]},
        metrics=[{"name": "clip_score", "id": "clip_target", "params": {**clip, "prompt_set": "target"}},
                 {"name": "clip_score", "id": "clip_retain", "params": {**clip, "prompt_set": "retain"}}],
        sampler={"steps": 2, "batch_size": 3, "height": 64, "width": 64}, output_dir=str(tmp_path / "runs"))


@pytest.fixture
def poisoned(monkeypatch):
    """Pipelines whose images are NaN for every prompt naming POISON (as a diverging sampler
    or a broken edit would give), the others untouched, in the same batches."""
    from evallearn import runner

    real = runner.load_pipeline

    def load(*args, **kwargs):
        pipe = real(*args, **kwargs)
        base = type(pipe)

        class Poisoned(base):
            def __call__(self, *a, **kw):
                out = base.__call__(self, *a, **kw)
                for j, prompt in enumerate(kw["prompt"]):
                    if POISON in prompt:
                        out.images[j][...] = np.nan
                return out

        pipe.__class__ = Poisoned
        return pipe

    monkeypatch.setattr(runner, "load_pipeline", load)


def _text(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_nonfinite_images_are_listed_never_scored_and_a_rerun_keeps_the_timings(
        tmp_path, tiny_pipe_dir, tiny_clip_dir, poisoned, capsys):
    from evallearn import cli
    from evallearn.cli import run_and_report as run  # the commands' run: results.json, then report.html
    from evallearn.config import load_config
    from evallearn.report.table import summary
    from evallearn.runner import prepare

    cfg = _config(tmp_path, tiny_pipe_dir, tiny_clip_dir)
    by_metric = prepare(load_config(cfg)).ctx.extras["requests_by_metric"]
    n_target, n_retain = len(by_metric["clip_target"]), len(by_metric["clip_retain"])
    assert n_retain >= 2 and all(POISON in r.prompt for r in by_metric["clip_retain"])
    assert not any(POISON in r.prompt for r in by_metric["clip_target"])

    first = run(load_config(cfg))
    for stage in ("before", "after"):
        listed = first["nonfinite"][stage]
        assert sorted(i["key"] for i in listed) == sorted(r.key for r in by_metric["clip_retain"])
        assert all(i["nonfinite_pixels"] == i["pixels"] == 64 * 64 * 3 for i in listed)
    retain, target = first["metrics"]["clip_retain"], first["metrics"]["clip_target"]
    for r in (retain["after"], retain["before"]):  # nothing finite: no value, not a number
        assert r["value"] is None and r["ci_low"] is None and r["n"] == 0 and r["nonfinite"] == n_retain
    assert retain["delta"] is None
    for r in (target["after"], target["before"]):  # untouched by its neighbours' NaNs
        assert r["n"] == n_target and r["nonfinite"] == 0 and np.isfinite(r["value"])
    text = _text(summary(first))
    assert "no value" in text and f"{n_retain} image(s) had NaN/inf" in text
    assert "clip_target (clip_score): Mean 100*max(cos,0)" in text and "↑ higher is better" in text
    assert re.search(rf"clip_target ↑ .* {n_target}/{n_target} │ +0/0 │", text), text
    assert re.search(rf"clip_retain ↑ .* no value .* no value .* – │ +0/0 │ +{n_retain}/{n_retain} │", text), text
    page = (tmp_path / "runs" / first["run"]["dir"].rsplit("/", 1)[-1] / "report.html").read_text()
    assert "no value" in page and f"non-finite images, after (not scored): {n_retain}" in page

    # the command line: the table, then a one-line error (exit 2) since a metric has no value
    with pytest.raises(UserError, match="no value for clip_retain, clip_retain \\(before\\)"):
        cli.run(cfg)
    assert "no value" in capsys.readouterr().out

    # that second run resumed a finished run: it computed nothing, so the costs are the first run's
    run_dir = first["run"]["dir"]
    again = json.loads((tmp_path / "runs" / run_dir.rsplit("/", 1)[-1] / "results.json").read_text())
    phases = ("prepare", "load", "before", "technique", "generate", "score", "total")
    assert {k: again["timings"][k] for k in phases} == {k: first["timings"][k] for k in phases}
    assert again["timings"]["attempts"] == 2 and set(again["timings"]["this_run"]) >= set(phases)
    assert again["technique"]["cached"] is True


def test_a_metric_that_reads_images_by_position_gets_no_value_when_one_is_nonfinite(tmp_path):
    from types import SimpleNamespace

    from evallearn.generation import GenRequest
    from evallearn.metrics.base import Metric, MetricResult
    from evallearn.runner import score
    from evallearn.store import ImageStore

    class Mean(Metric):  # mean grey level of its images
        def update(self, requests, images, judges):
            self._append("grey", images.reshape(len(images), -1).mean(1))

        def compute(self):
            return self.mean_result("grey")

    class ByPosition(Mean):
        scores_each_image = False

    class EachImage(Mean):
        scores_each_image = True

    store = ImageStore(tmp_path)
    reqs = [GenRequest(f"p{i}", i) for i in range(3)]
    for i, r in enumerate(reqs):
        store.put(r.key, np.full((2, 2, 3), 10 * (i + 1), np.uint8),
                  nonfinite={"nonfinite_pixels": 12} if i == 1 else None)
    metrics = {"pos": ByPosition(None, None), "each": EachImage(None, None)}
    plan = SimpleNamespace(metrics=metrics, ctx=SimpleNamespace(extras={"requests_by_metric": {
        "pos": reqs, "each": reqs}}))
    out = score(plan, store, SimpleNamespace(for_metric=lambda m: {}))
    assert out["each"].value == 20.0 and out["each"].n == 2 and out["each"].nonfinite == 1  # (10 + 30) / 2
    pos = out["pos"]
    assert isinstance(pos, MetricResult) and pos.value is None and pos.n == 0 and pos.nonfinite == 1
    assert "1 of its 3 images" in pos.details["no_value"]
