"""The typed results.json: a schema version, a round trip, an unversioned file from the writer
before the schema migrated (or refused in one line when it has another shape), a newer schema
refused, and the reports reading the typed results."""

import json
import math

import pytest
from helpers import eval_learn, write_config
from rich.console import Console

from evallearn.errors import UserError
from evallearn.results import SCHEMA_VERSION, RunResults, check_resumable, load_results, parse_results


def _metric(value, before, n=8, higher=True):
    return {"after": {"value": value, "ci_low": value - 0.125, "ci_high": value + 0.125, "n": n,
                      "higher_is_better": higher, "details": {"seeds": [0, 1]},
                      "judges": {"classifier": {"name": "toy_classifier"}}},
            "before": {"value": before, "ci_low": before - 0.25, "ci_high": before + 0.25, "n": n,
                       "higher_is_better": higher, "details": {}, "judges": {}},
            "delta": value - before}


def unversioned_results():
    """A results.json as the writer at commit 15d4896 (before ``schema_version``) wrote it:
    run, config (RunConfig dump), model (ModelInfo.describe()), technique, metrics (MetricResult
    dicts without ``nonfinite``), seeds, environment, flat timings; no run-level ``nonfinite``."""
    return {
        "run": {"name": "quickstart", "spec_hash": "0123456789ab", "dir": "runs/quickstart-0123456789ab",
                "eval_learn": "0.1.0"},
        "config": {"name": "quickstart", "model": "toy", "technique": {"name": "uce", "params": {}, "id": None},
                   "concept": {"name": "cross", "kind": "object", "synonyms": [], "retain": []},
                   "metrics": [{"name": "ua", "params": {}, "id": None},
                               {"name": "clip_score", "params": {}, "id": "clip_target"}],
                   "probes": [], "seed": 0, "device": "cpu", "dtype": "float32",
                   "sampler": {"scheduler": "ddim", "steps": 20, "guidance_scale": None, "height": None,
                               "width": None, "eta": 0.0, "batch_size": 16},
                   "output_dir": "runs", "base_model": None, "base_metrics": True},
        "model": {"ref": "toy", "path": "/w/toy", "tags": ["toy"], "pipeline_class": "StableDiffusionPipeline",
                  "default_size": 32, "default_guidance": 4.0, "fingerprint": "abcdef"},
        "technique": {"name": "uce", "params": {"guide": " "}, "cached": False, "cache_dir": "/w/cache/uce"},
        "metrics": {"ua": _metric(0.875, 0.125, higher=True), "clip_target": _metric(0.25, 0.5, higher=False)},
        "seeds": {"run_seed": 0, "rule": "each image's generator is seeded with its request's seed",
                  "n_requests": 16},
        "environment": {"versions": {"eval-learn": "0.1.0", "torch": "2.4.0"}, "device": "cpu",
                        "python": "3.11.9", "platform": "Linux", "torch_threads": 2},
        "timings": {"prepare": 0.5, "load": 1.0, "before": 2.0, "technique": 3.0, "generate": 4.0,
                    "score": 0.25, "total": 10.75},
    }


def _probe(value, lo, hi, per_item, probe="noise_based"):
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": len(per_item), "higher_is_better": False,
            "details": {"per_item": per_item}, "judges": {"classifier": {"name": "toy_classifier"}},
            "nonfinite": 0, "kind": "recovery", "chance": 0.1, "scoring": {"rule": "choice"}, "probe": probe}


def current_results():
    """A schema-2 document with every section filled: a probe with its base model's result
    (``before``, ``delta``) as a metric has it, a verdict with NaN in it."""
    data = unversioned_results()
    data["schema_version"] = SCHEMA_VERSION
    for entry in data["metrics"].values():
        entry["after"]["nonfinite"] = 1
        entry["before"]["nonfinite"] = 0
    probe = {"after": _probe(0.5, 0.25, 0.75, [1.0, 0.0]), "before": _probe(0.875, 0.75, 1.0, [1.0, 1.0]),
             "delta": -0.375}
    data["probes"] = {"results": {"noise_based": probe},
                      "verdict": {"label": "inconclusive", "summary": "too few", "standard": 0.1, "base": None,
                                  "chance": 0.1, "test": "sign test", "alpha": 0.05,
                                  "probes": {"noise_based": {"value": 0.5, "vs_standard": math.nan,
                                                             "ci_low": math.nan, "ci_high": math.nan,
                                                             "p": 1.0, "p_holm": 1.0, "recovers": False}},
                                  "recovered_by": [], "warnings": ["n = 2 prompts is too few"],
                                  "alternatives": None}}
    data["nonfinite"] = {"after": [{"key": "k1", "prompt": "a cross", "seed": 3, "nonfinite_pixels": 12,
                                    "pixels": 3072, "latents_nonfinite_from_step": 5, "steps": 20}]}
    data["timings"] = {**data["timings"], "attempts": 2, "this_run": {"prepare": 0.5, "total": 1.0},
                       "engine": {"seconds": {}, "batch_sizes": [16], "notes": []}}
    data["warnings"] = []
    return data


def _text(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def _one_line_exit_2(res):
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (res.stdout, res.stderr)
    return lines[0]


def test_round_trip_keeps_every_value_and_nan(tmp_path):
    data = current_results()
    res = parse_results(data, "x")
    path = res.save(tmp_path / "results.json")
    text = path.read_text()
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION == 2
    assert "NaN" in text  # a NaN stays NaN (null would read as "no value")
    again = load_results(path)
    assert again.model_dump_json() == res.model_dump_json()
    on_disk = json.loads(text)
    for key in ("run", "config", "model", "technique", "seeds", "environment"):
        assert on_disk[key] == data[key], key
    assert on_disk["metrics"] == data["metrics"]
    assert on_disk["nonfinite"] == data["nonfinite"]
    assert on_disk["timings"] == data["timings"]  # phases the run did not have stay absent, not null
    assert on_disk["probes"]["results"] == data["probes"]["results"]  # {after, before, delta}, as a metric
    assert math.isnan(again.probes.verdict.probes["noise_based"].vs_standard)
    assert again.metrics["clip_target"].after.higher_is_better is False
    assert again.nonfinite["after"][0].latents_nonfinite_from_step == 5
    # the JSON view for scripts reads what the file says
    assert again["metrics"]["ua"]["after"]["value"] == 0.875 and "probes" in again


def test_numpy_values_in_details_are_written_as_numbers(tmp_path):
    import numpy as np

    data = current_results()
    data["metrics"]["ua"]["after"]["details"].update(count=np.int64(3), per_item=np.array([1.0, 0.0]),
                                                     rate=np.float32(0.5))
    res = parse_results(data, "x")
    details = json.loads(res.save(tmp_path / "results.json").read_text())["metrics"]["ua"]["after"]["details"]
    assert details == {"seeds": [0, 1], "count": 3, "per_item": [1.0, 0.0], "rate": 0.5}
    assert res["metrics"]["ua"]["after"]["details"]["count"] == 3


def test_unversioned_results_are_migrated_with_the_same_numbers(tmp_path):
    old = unversioned_results()
    res = parse_results(old, "old")
    assert res.schema_version == SCHEMA_VERSION
    ua = res.metrics["ua"]
    assert (ua.after.value, ua.after.ci_low, ua.after.ci_high, ua.after.n) == (0.875, 0.75, 1.0, 8)
    assert (ua.before.value, ua.delta, ua.after.nonfinite) == (0.125, 0.75, 0)
    assert res.timings.total == 10.75 and res.timings.attempts is None  # not recorded, not made up
    assert res.nonfinite == {} and any("did not check images for NaN/inf" in w for w in res.warnings)
    assert any("migrated" in w for w in res.warnings) and res.migrated
    assert not parse_results(current_results(), "new").migrated
    assert old.get("schema_version") is None  # the input is not changed


def v1_results():
    """A schema-1 document as the writer before probe entries wrote it: each probe's result flat,
    the base model's result inside it as ``details.base`` (here without the fields it shares with
    the probe's own result, as a hand-made or summary base has it), one probe without a base."""
    data = current_results()
    data["schema_version"] = 1
    base = {k: v for k, v in _probe(0.875, 0.75, 1.0, [1.0, 1.0]).items()
            if k not in ("higher_is_better", "kind", "chance", "scoring", "probe")}
    std = _probe(0.125, 0.0, 0.375, [0.0, 0.0], "standard_prompt")
    std["details"]["base"] = base
    data["probes"]["results"] = {"standard_prompt": std, "noise_based": _probe(0.5, 0.25, 0.75, [1.0, 0.0])}
    return data


def test_a_schema_1_file_is_migrated_base_into_before_with_the_same_numbers(tmp_path):
    from evallearn.probes.report import probe_rows
    from evallearn.probes.verdict import verdict

    old = v1_results()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    before_read = path.read_bytes()
    res = load_results(path)
    assert path.read_bytes() == before_read  # never rewritten on read
    assert res.schema_version == SCHEMA_VERSION and res.migrated and res.migrated_from == 1
    assert any("schema 1" in w and "details.base" in w for w in res.warnings)
    std = res.probes.results["standard_prompt"]
    flat = old["probes"]["results"]["standard_prompt"]
    # after: the flat result less details.base, number for number
    assert std.after.model_dump(exclude={"details"}) == {k: v for k, v in flat.items() if k != "details"}
    assert std.after.details == {"per_item": [0.0, 0.0]}
    b = std.before
    assert (b.value, b.ci_low, b.ci_high, b.n, b.details, b.judges) == \
        (0.875, 0.75, 1.0, 2, {"per_item": [1.0, 1.0]}, {"classifier": {"name": "toy_classifier"}})
    # what the base result lacked is the probe's own: same direction, rule, floor and name
    assert (b.higher_is_better, b.kind, b.chance, b.scoring, b.probe) == \
        (False, "recovery", 0.1, {"rule": "choice"}, "standard_prompt")
    assert std.delta == 0.125 - 0.875 == -0.75
    noise = res.probes.results["noise_based"]
    assert noise.before is None and noise.delta is None and noise.after.value == 0.5
    assert old["schema_version"] == 1 and "base" in flat["details"]  # the input is not changed
    # the readers see the same numbers the flat file had
    rows = {r[0].split()[1]: r[1:] for r in probe_rows(res)}
    assert rows["standard_prompt"] == ("0.875", "0.125", "[0.000, 0.375]", "-0.750", "2")
    assert rows["noise_based"][0] == "–" and rows["noise_based"][3] == "–"
    # the verdict reads either form alike
    entries = res["probes"]["results"]
    assert verdict(entries) == verdict(old["probes"]["results"])
    assert verdict(entries)["base"] == 0.875
    # written back it is schema 2 and reads without migration
    again = load_results(res.save(tmp_path / "new" / "results.json"))
    assert not again.migrated and again.probes.results["standard_prompt"].before.value == 0.875


def test_an_unversioned_file_with_probes_is_migrated_to_probe_entries():
    old = unversioned_results()
    old["probes"] = {k: v for k, v in v1_results()["probes"].items()}
    res = parse_results(old, "old")
    assert res.migrated and res.migrated_from is None and res.schema_version == SCHEMA_VERSION
    std = res.probes.results["standard_prompt"]
    assert (std.before.value, std.delta, "base" in std.after.details) == (0.875, -0.75, False)
    assert any("unversioned" in w for w in res.warnings) and any("schema 1" in w for w in res.warnings)


def test_compare_reads_an_unversioned_file_and_refuses_an_unknown_old_shape(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(unversioned_results()))
    res = eval_learn("compare", tmp_path / "old")
    assert res.returncode == 0, res.stderr
    assert "0.875 [0.750, 1.000]" in res.stdout and "+0.750" in res.stdout and "quickstart" in res.stdout
    notes = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(notes) == 1 and notes[0].startswith("note:") and str(tmp_path / "old" / "results.json") in notes[0]
    assert "migration" in notes[0]

    other = {"name": "quickstart", "scores": {"ua": 0.875}}  # some other program's results.json
    (tmp_path / "other").mkdir()
    path = tmp_path / "other" / "results.json"
    path.write_text(json.dumps(other))
    line = _one_line_exit_2(eval_learn("compare", tmp_path / "other"))
    assert str(path) in line and "rerun" in line and "no 'run' section" in line

    bad = unversioned_results()
    bad["metrics"]["ua"]["after"]["n"] = "eight"
    path.write_text(json.dumps(bad))
    line = _one_line_exit_2(eval_learn("compare", tmp_path / "other"))
    assert "metrics.ua.after.n" in line and "unversioned" in line and "rerun" in line


def test_a_newer_schema_is_refused_in_one_line(tmp_path):
    newer = current_results()
    newer["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "new").mkdir()
    path = tmp_path / "new" / "results.json"
    path.write_text(json.dumps(newer))
    line = _one_line_exit_2(eval_learn("compare", tmp_path))
    assert str(path) in line and f"schema {SCHEMA_VERSION + 1}" in line and "upgrade eval-learn" in line
    with pytest.raises(UserError, match="move that run folder away"):
        check_resumable(path)
    for version in ("1", 0, True):
        with pytest.raises(UserError, match="schema_version"):
            parse_results({**current_results(), "schema_version": version}, "f")


def test_unknown_keys_in_the_numbers_are_refused():
    data = current_results()
    data["metrics"]["ua"]["after"]["value_scaled"] = 87.5  # a key this code cannot interpret
    with pytest.raises(UserError, match="metrics.ua.after.value_scaled"):
        parse_results(data, "f")


def test_console_table_html_and_compare_read_typed_results(tmp_path):
    from evallearn.probes.report import probe_html, probe_rows
    from evallearn.report.compare import load_rows, render
    from evallearn.report.html import write_report
    from evallearn.report.table import nonfinite_lines, summary, unscored
    from evallearn.store import ImageStore

    res = parse_results(current_results(), "x")
    assert isinstance(res, RunResults)
    text = _text(summary(res))
    assert "quickstart · uce on 'cross' · toy" in text
    assert "0.875" in text and "[0.750, 1.000]" in text and "+0.750" in text and "8/8" in text
    assert "0/1" in text  # the non-finite column: before 0, after 1
    assert "probe noise_based ↓ (chance 0.1)" in text
    assert unscored(res) == []
    assert "'a cross' seed 3 (latents from step 5 of 20, 12/3072 pixel values) [k1]" in "\n".join(
        nonfinite_lines(res))
    assert probe_rows(res)[0][1:6] == ("0.875", "0.500", "[0.250, 0.750]", "-0.375", "2")
    assert "Verdict: inconclusive" in probe_html(res)
    page = write_report(tmp_path, res, ImageStore(tmp_path / "images"), []).read_text()
    assert "0.875 [0.75, 1]" in page and "Verdict: inconclusive" in page and "&quot;batch_sizes&quot;" in page

    res.save(tmp_path / "a" / "results.json")
    rows, keys = load_rows([tmp_path / "a"])
    assert keys == ["ua", "clip_target"] and rows[0].spec == "0123456789ab"
    out = "".join(_text(p) for p in render(rows, keys))
    assert "↓ lower is better" in out and "0.250 [0.125, 0.375]" in out and "-0.250" in out


def test_a_run_writes_the_current_schema_and_refuses_to_resume_a_newer_folder(tmp_path, tiny_pipe_dir, tiny_clip_dir,
                                                                              capsys):
    from evallearn.config import load_config
    from evallearn.runner import prepare, run

    cfg = write_config(tmp_path / "run.yaml", name="schema", model=str(tiny_pipe_dir),
                       technique={"name": "uce", "params": {"guide": " "}}, concept={"name": "cat"},
                       metrics=[{"name": "clip_score", "params": {"clip_model": str(tiny_clip_dir),
                                                                  "images_per_prompt": 1, "prompt_set": "target"}}],
                       sampler={"steps": 1, "batch_size": 2, "height": 64, "width": 64},
                       output_dir=str(tmp_path / "runs"))
    first = run(load_config(cfg))
    path = prepare(load_config(cfg)).run_dir / "results.json"
    assert isinstance(first, RunResults) and json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert load_results(path).model_dump_json() == first.model_dump_json()

    on_disk = json.loads(path.read_text())
    path.write_text(json.dumps({**on_disk, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(UserError) as exc:
        run(load_config(cfg))
    assert "\n" not in str(exc.value) and "upgrade eval-learn" in str(exc.value)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION + 1  # left as it was

    old = {k: v for k, v in on_disk.items() if k not in ("schema_version", "warnings", "nonfinite")}
    path.write_text(json.dumps(old))  # the unversioned writer's file: resumed and rewritten
    capsys.readouterr()
    again = run(load_config(cfg))
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and str(path) in notes[0] and "rewrites it" in notes[0]
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert again.metrics["clip_score"].after.value == first.metrics["clip_score"].after.value
