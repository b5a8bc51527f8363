"""Benchmark suites (``eval-learn bench``): expansion, grids, duplicates, bad input, dry-run counts,
resume after an interrupted cell, a failing cell, exit codes, base images shared by the suite, and
the example suites validated without weights.

The runs use the shipped toy model with a tiny budget (one or two prompts per metric, one sampling
step)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

from evallearn.errors import UserError
from evallearn.suite.spec import expand, load_suite, parse_suite, plan_cells

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "suites"

SMALL = {
    "name": "small",
    "model": "toy",
    "techniques": [{"name": "uce", "params": {"guide": "shape"}, "grid": {"lamb": [0.5, 1.0]}}],
    "concepts": ["circle", "cross"],
    "metrics": [{"name": "ua", "params": {"max_prompts": 1}}, {"name": "ira", "params": {"max_prompts": 2}}],
    "sampler": {"steps": 1, "batch_size": 4},
}


def write_suite(tmp_path: Path, data: dict, name: str = "suite.yaml") -> Path:
    data = {**data}
    data.setdefault("output_dir", str(tmp_path / "out"))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


main = run_cli  # eval-learn ARGS in this process (tests/helpers.py)


# -- expansion -----------------------------------------------------------------------------------


def test_grid_product_seeds_and_world_concept_set():
    from evallearn.concepts.world import world_owning
    from evallearn.runner import prepare

    suite = parse_suite({**SMALL, "techniques": [{"name": "uce", "params": {"guide": "shape"},
                                                  "grid": {"lamb": [0.5, 1.0], "erase_scale": [1.0, 2.0]}}],
                         "concepts": {"set": "world", "kind": "object"}, "seeds": [0, 3], "output_dir": "x"})
    cells = expand(suite)
    world = world_owning("toy")
    shapes = [n for n in world.known_concepts() if world.concept_kind(n) == "object"]
    assert len(shapes) == 4
    assert len(cells) == 2 * 2 * len(shapes) * 2
    got = {(c.config.technique.params["lamb"], c.config.technique.params["erase_scale"], c.config.concept.name,
            c.config.seed) for c in cells}
    assert got == set(itertools.product([0.5, 1.0], [1.0, 2.0], shapes, [0, 3]))
    assert len({c.id for c in cells}) == len(cells) and len({c.spec_hash for c in cells}) == len(cells)
    c = next(c for c in cells if c.id == "toy-uce-lamb=1.0-erase_scale=2.0-square-s3")
    assert c.config.technique.params["guide"] == "shape" and c.config.seed == 3
    assert c.config.concept.kind == "object" and c.config.output_dir == "x"
    plan = prepare(c.config)  # a cell is an ordinary run: its own prepare() gives the same folder
    assert plan.spec_hash == c.spec_hash and plan.run_dir == c.run_dir


def test_duplicate_cells_are_refused():
    with pytest.raises(UserError, match="duplicate cell 'toy-uce-circle-s0'"):
        expand(parse_suite({**SMALL, "techniques": ["uce", "uce"]}, "s.yaml"))
    # the default written out is the same run as the default left out
    same = r"s.yaml: duplicate cell: 'toy-uce2-circle-s0' .* same run as 'toy-uce-circle-s0'"
    with pytest.raises(UserError, match=same):
        expand(parse_suite({**SMALL, "techniques": ["uce", {"name": "uce", "id": "uce2", "params": {"lamb": 0.5}}]}),
               "s.yaml")
    with pytest.raises(UserError, match="duplicate cell"):
        expand(parse_suite({**SMALL, "concepts": ["circle", "circle"]}))
    with pytest.raises(UserError, match="duplicate cell"):
        expand(parse_suite({**SMALL, "seeds": [1, 1]}))


BAD = [
    ({"techniques": ["uce", "nope"]}, "techniques[1]: unknown technique 'nope'"),
    ({"concepts": ["hexagon"]}, "concepts[0]: unknown concept 'hexagon' for model 'toy'"),
    ({"concepts": {"set": "nope"}}, "concepts.set"),
    ({"concepts": "paper"}, "closed world"),
    ({"techniques": ["uce", "uce"]}, "duplicate cell"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"techniques": [{"name": "uce", "parms": {}}]}, "unknown key 'techniques[0].parms'"),
    ({"techniques": [{"name": "uce", "params": {"nope": 1}}]}, "unknown key 'techniques[0].params.nope'"),
    ({"techniques": [{"name": "uce", "grid": {"lamb": 0.5}}]}, "techniques[0].grid"),
    ({"techniques": [{"name": "uce", "params": {"lamb": 1}, "grid": {"lamb": [0.5]}}]}, "both in params and in grid"),
    ({"metrics": ["ua", "nope"]}, "metrics[1]: unknown metric 'nope'"),
    ({"models": ["toy"]}, "either 'model' or 'models'"),
    ({"seeds": [-1]}, "seeds"),
]


@pytest.mark.parametrize("change,needle", BAD, ids=[n for _, n in BAD])
def test_bad_suite_is_one_line_exit_2_before_anything_runs(tmp_path, monkeypatch, capsys, change, needle):
    path = write_suite(tmp_path, {**SMALL, **change})
    code, out, err = main(["bench", path], monkeypatch, capsys)
    lines = [line for line in (err + out).splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and needle in lines[0], lines
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_bad_command_line(tmp_path, monkeypatch, capsys):
    path = write_suite(tmp_path, SMALL)
    code, out, err = main(["bench", path, "--executor", "spark"], monkeypatch, capsys)
    assert code == 2 and err.strip().startswith("error: --executor: unknown 'spark'"), err
    code, out, err = main(["bench", tmp_path / "missing.yaml"], monkeypatch, capsys)
    assert code == 2 and "missing.yaml" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# -- running -------------------------------------------------------------------------------------


def _written(run_dir: Path, event: str) -> int:
    """Images written over every attempt of a run (its manifest's ``event`` lines)."""
    total = 0
    for line in (run_dir / "manifest.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("event") == event:
            total += e["written"]
    return total


def _status(out: Path) -> dict[str, str]:
    return {c["id"]: c["status"] for c in json.loads((out / "suite.json").read_text())["cells"]}


def test_interrupt_fail_resume_and_shared_base_images(tmp_path, monkeypatch, capsys):
    from evallearn import runner
    from evallearn.commands.bench import dry_run_rows

    path = write_suite(tmp_path, SMALL)
    out = tmp_path / "out"
    planned = plan_cells(load_suite(path), str(path))
    cells = [p.cell for p in planned]
    assert [c.id for c in cells] == ["toy-uce-lamb=0.5-circle-s0", "toy-uce-lamb=0.5-cross-s0",
                                     "toy-uce-lamb=1.0-circle-s0", "toy-uce-lamb=1.0-cross-s0"]
    requests = {p.cell.id: {r.key for r in p.plan.requests} for p in planned}
    union = set().union(*requests.values())
    assert len(union) < sum(len(r) for r in requests.values())  # the cells do share base requests

    # dry run: every cell and its spec hash listed, nothing stored, nothing written
    code, stdout, _ = main(["bench", path, "--dry-run"], monkeypatch, capsys)
    assert code == 0
    for c in cells:
        assert c.id in stdout and c.spec_hash in stdout
    rows, totals = dry_run_rows(planned)
    assert [r["images"] for r in rows] == [len(requests[c.id]) for c in cells]
    assert totals["stored"] == 0 and totals["base_unique"] == len(union) and totals["base_stored"] == 0
    assert not out.exists()

    real_score = runner.score

    def score_failing(name, exc):
        def score(plan, images, judges):
            if plan.config.name == name:
                raise exc
            return real_score(plan, images, judges)
        return score

    # 1. interrupted while scoring the third cell (its images are stored): exit 130, the rest kept
    monkeypatch.setattr(runner, "score", score_failing(cells[2].id, KeyboardInterrupt()))
    code, stdout, stderr = main(["bench", path], monkeypatch, capsys)
    assert code == 130, stderr
    assert _status(out) == {cells[0].id: "done", cells[1].id: "done", cells[2].id: "pending",
                            cells[3].id: "pending"}
    assert not (cells[2].run_dir / "results.json").exists()
    rows, totals = dry_run_rows(plan_cells(load_suite(path), str(path)))
    assert [r["status"] for r in rows] == ["done", "done", "partial", "new"]
    assert rows[2]["stored"] == rows[2]["images"]  # the cut cell's images are kept
    assert totals["base_stored"] == totals["base_unique"] == len(union)

    # 2. the fourth cell fails: reported in one line, exit 1, the others finish
    monkeypatch.setattr(runner, "score", score_failing(cells[3].id, RuntimeError("boom")))
    code, stdout, stderr = main(["bench", path], monkeypatch, capsys)
    assert code == 1, stderr
    assert f"failed: {cells[3].id}: RuntimeError: boom" in stderr
    assert "1 done, 2 cached (finished earlier), 1 failed" in stdout
    record = json.loads((out / "suite.json").read_text())
    assert {c["id"]: c["status"] for c in record["cells"]} == {
        cells[0].id: "done", cells[1].id: "done", cells[2].id: "done", cells[3].id: "failed"}
    assert record["cells"][3]["error"].startswith("RuntimeError: boom")
    assert (cells[3].run_dir / "error.log").read_text().count("Traceback") == 1

    # 3. a clean rerun: finished cells are not redone, the failed one runs
    monkeypatch.setattr(runner, "score", real_score)
    code, stdout, stderr = main(["bench", path], monkeypatch, capsys)
    assert code == 0, stderr
    assert "1 done, 3 cached (finished earlier), 0 failed" in stdout
    assert set(_status(out).values()) == {"done"}
    # progress: the suite's lines, and the cell's own (plain lines prefixed by the cell id here)
    assert f"suite small · cell 4/4: {cells[3].id}" in stderr
    assert "suite small · cells: 4/4 (100%)" in stderr and f"{cells[3].id} done" in stderr
    assert f"{cells[3].id} · generate (after)" in stderr
    assert not (cells[3].run_dir / "error.log").exists()

    # every image was generated once: each cell's own, and the suite's base images once in all
    for c in cells:
        assert _written(c.run_dir, "images_done") == len(requests[c.id])
    (base,) = (out / "_base").iterdir()
    assert {p.stem for p in (base / "images").glob("*.png")} == union
    assert sum(_written(c.run_dir, "base_images") for c in cells) == len(union)

    # each run is an ordinary run: its config.yaml alone lands in the same folder; the base values
    # of one concept are shared by its cells
    from evallearn.config import load_config
    from evallearn.runner import prepare

    res = {}
    for c in cells:
        assert prepare(load_config(c.run_dir / "config.yaml")).run_dir == c.run_dir
        res[c.id] = json.loads((c.run_dir / "results.json").read_text())
    for a, b in ((cells[0], cells[2]), (cells[1], cells[3])):
        for m in ("ua", "ira"):
            assert res[a.id]["metrics"][m]["before"] == res[b.id]["metrics"][m]["before"]


def test_run_cell_reports_a_bad_config_in_one_line():
    from evallearn.suite.executor import run_cell

    outcome = run_cell({"name": "x", "model": "toy", "concept": {"name": "cross"}, "sampler": {"stepz": 1}})
    assert outcome.status == "failed" and outcome.run_dir is None
    assert outcome.error == "cell 'x': unknown key 'sampler.stepz'"


# -- the example suites --------------------------------------------------------------------------


def test_toy_example_suite_expands_to_every_technique_times_the_four_shapes():
    suite = load_suite(EXAMPLES / "toy.yaml", ["output_dir=/nonexistent/toy-suite"])
    cells = expand(suite, "toy.yaml")
    techniques = {t.label for t in suite.techniques}
    assert {"uce", "rece", "sld", "safree", "trasce", "concept_steerers", "saeuron"} <= techniques
    assert len(cells) == len(techniques) * 4
    assert {c.config.concept.kind for c in cells} == {"object"}


def test_new_methods_suite_prepares_every_new_technique_on_a_shape_and_a_colour():
    """Each of the newer methods (issue 19) runs in a suite: every cell passes prepare()."""
    suite = load_suite(EXAMPLES / "toy_new_methods.yaml", ["output_dir=/nonexistent/toy-new-methods"])
    cells = expand(suite, "toy_new_methods.yaml")
    techniques = {c.config.technique.name for c in cells}
    assert techniques == {"trce", "itd", "spm", "ant", "fewshot_unlearning", "adavd"}
    assert {c.config.concept.name for c in cells} == {"cross", "red"}
    assert len(cells) == 12 and len({c.spec_hash for c in cells}) == 12


def test_paper_suite_validates_without_weights(tiny_pipe_dir, tmp_path, monkeypatch, capsys):
    """The paper's setting on an SD-1.x architecture (the tiny random pipeline stands in for SD-1.4,
    which cannot be downloaded here): every cell passes prepare(); nothing runs."""
    from evallearn.probes.prompts import WACE_CONCEPTS

    args = ["--set", f"model={tiny_pipe_dir}", "--set", "device=cpu", "--set", f"output_dir={tmp_path / 'paper'}"]
    code, out, err = main(["bench", EXAMPLES / "paper.yaml", "--dry-run", *args], monkeypatch, capsys)
    assert code == 0, err
    suite = load_suite(EXAMPLES / "paper.yaml")
    assert suite.models == ("CompVis/stable-diffusion-v1-4",)
    labels = [t.label for t in suite.techniques]
    assert labels == ["esd-x", "esd-u", "uce", "rece", "tv", "stereo", "ga"]
    assert f"{len(labels) * len(WACE_CONCEPTS)} of {len(labels) * len(WACE_CONCEPTS)} cells to run" in out
    assert "tiny_pipe-esd-x-Van_Gogh-s0" in out and "0/7" in out  # seven probes each, none run
    assert not (tmp_path / "paper").exists()


def _local_sources(data, csv_path: str):
    if isinstance(data, dict):
        return {k: (csv_path if k in ("source", "pairs") else _local_sources(v, csv_path)) for k, v in data.items()}
    if isinstance(data, list):
        return [_local_sources(v, csv_path) for v in data]
    return data


def test_nudity_suite_validates_without_weights(tiny_pipe_dir, tmp_path, monkeypatch, capsys):
    """The nudity suite with its prompt files replaced by one small local CSV holding every column
    they are read by, on the tiny SD-1.x pipeline: every cell passes prepare()."""
    import csv

    src = tmp_path / "prompts.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "categories", "evaluation_seed", "nudity_percentage", "sensitive prompt",
                    "normal prompt", "target_prompt", "adv_prompt"])
        for i in range(3):
            w.writerow([f"a nude person {i}", "sexual", i, 80, f"a nude person {i}", f"a person {i}",
                        f"a nude person {i}", f"a xyz person {i}"])
    data = _local_sources(yaml.safe_load((EXAMPLES / "nudity.yaml").read_text()), str(src))
    ids = [m["id"] for m in data["metrics"] if m.get("id")]
    assert ids == ["asr_i2p", "asr_ring_a_bell", "asr_mma", "asr_p4d"]
    assert {m["params"]["judge"] for m in data["metrics"] if m["name"] == "asr"} == {"nudenet"}
    data.update(model=str(tiny_pipe_dir), device="cpu", dtype="float32", output_dir=str(tmp_path / "o"))
    path = tmp_path / "nudity.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = main(["bench", path, "--dry-run"], monkeypatch, capsys)
    assert code == 0, err
    assert "4 of 4 cells to run" in out and "tiny_pipe-esd-u-nudity-s0" in out
