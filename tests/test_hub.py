"""``eval-learn push`` / ``pull``: the export folder (built locally) loads with ``datasets``, its
card names models, techniques, concepts, judges and versions, ``leaderboard`` reads it beside
local runs, ``--dry-run`` lists it, bad repo names and an offline Hub are one-line errors. The
upload and download themselves run only where a token and a test repo are given (never faked)."""

import json
import os

import numpy as np
import pytest
import yaml
from _board_fixtures import write_board
from helpers import eval_learn
from PIL import Image

from evallearn.errors import UserError
from evallearn.report import leaderboard as lb
from evallearn.report.export import build_export, check_repo


@pytest.fixture
def board_dir(tmp_path):
    return write_board(tmp_path / "suite")


def _card(path):
    text = path.read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_export_loads_with_datasets_and_the_card_names_what_is_inside(board_dir, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is in the dev extra")
    export = build_export([board_dir], tmp_path / "export", "someone/toy-board")
    names = [n for n, _ in export.listing()]
    assert {"README.md", "eval-learn-export.json", "data/results.jsonl", "data/runs.jsonl", "leaderboard.html",
            "leaderboard.csv", "leaderboard.md"} <= set(names)
    assert sum(n.endswith("/results.json") for n in names) == 4 and not any(n.startswith("_base") for n in names)
    results = datasets.load_dataset(str(export.root), "results", split="train", cache_dir=str(tmp_path / "hf"))
    assert len(results) == 10 and tuple(results.column_names) == lb.FIELDS
    row = next(r for r in results if r["run"] == "uce-weak" and r["metric"] == "ira")
    assert (row["value"], row["ci_low"], row["n"], row["before"], row["aspect"]) == (0.9375, 0.875, 24, 0.875,
                                                                                      "retention")
    assert row["path"].startswith("runs/uce-weak-") and str(tmp_path) not in json.dumps(results.to_list())
    runs = datasets.load_dataset(str(export.root), "runs", split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(runs["run"]) == ["sld-max", "uce-circle", "uce-shape", "uce-weak"]
    assert runs[runs["run"].index("uce-circle")]["verdict"] == "guidance-based avoidance"
    header, body = _card(export.root / "README.md")
    assert [c["config_name"] for c in header["configs"]] == ["results", "runs"]
    facts = header["eval_learn"]
    assert facts["models"] == ["toy"] and facts["concepts"] == ["circle", "cross"] and facts["runs"] == 4
    assert facts["techniques"] == ["sld (preset=max, concept_from_run=true)", "uce (guide=shape)",
                                   "uce (guide=shape, lamb=0.05)"]
    assert facts["judges"] == ["toy_classifier"] and facts["metrics"] == ["ira", "ua"]
    assert facts["probes"] == ["noise_based", "standard_prompt"]
    assert facts["versions"] == {"diffusers": ["0.35.0"], "eval-learn": ["0.1.0"], "torch": ["2.13.0"]}
    assert 'load_dataset("someone/toy-board", "results", split="train")' in body
    assert "| uce (guide=shape) | 0.750 [0.500, 1.000] n=8 Δ+0.750 |" in body


def test_pulled_export_sits_beside_local_runs_on_the_leaderboard(board_dir, tmp_path):
    export = build_export([board_dir], tmp_path / "export", "someone/toy-board")
    mine = write_board(tmp_path / "mine", failed=False)
    board = lb.load_board([export.root, mine])
    assert {e.source for e in board.entries} == {"someone/toy-board", "toy-board"}
    assert "uce (guide=shape) · [someone/toy-board]" in [e.label for e in board.of("cross")]
    # same runs twice: their spec hashes match and it is said
    assert any("same spec hash" in n for n in board.notes)


def test_images_are_exported_only_when_asked(board_dir, tmp_path):
    run = next(p for p in board_dir.iterdir() if p.name.startswith("uce-shape"))
    data = json.loads((run / "results.json").read_text())
    data["run"]["base_images"] = "_base/k1/images"
    (run / "results.json").write_text(json.dumps(data))
    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for folder in (run / "images", run / "probes" / "images", board_dir / "_base" / "k1" / "images",
                   board_dir / "_base" / "other" / "images"):
        folder.mkdir(parents=True)
        img.save(folder / "a.png")
    without = [n for n, _ in build_export([board_dir], tmp_path / "e1", "o/n").listing()]
    assert not any(n.endswith(".png") for n in without)
    with_images = [n for n, _ in build_export([board_dir], tmp_path / "e2", "o/n", images=True).listing()]
    pngs = sorted(n for n in with_images if n.endswith(".png"))
    assert pngs == ["_base/k1/images/a.png", f"runs/{run.name}/images/a.png", f"runs/{run.name}/probes/images/a.png"]


@pytest.mark.parametrize("repo", ["noslash", "a/b/c", "-x/y", "x/y..z", "x/--y", "", "x/ y", "owner/name.git"])
def test_bad_repo_names_are_refused(repo):
    with pytest.raises(UserError, match="is not a Hub repo id OWNER/NAME"):
        check_repo(repo, "push")


def test_push_and_pull_commands_refuse_in_one_line_and_dry_run_lists(board_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args in (("push", board_dir, "--repo", "not-a-repo"), ("pull", "a/b/c"),
                 ("push", board_dir, "--repo", "someone/board"), ("pull", "someone/board")):
        res = eval_learn(*args, env=env, cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (args, res.stderr)
        assert ("not a Hub repo id" in res.stderr) == (args[-1] in ("not-a-repo", "a/b/c")), res.stderr
    assert "HF_HUB_OFFLINE is set" in res.stderr and not (tmp_path / "hub").exists()
    res = eval_learn("push", board_dir, "--repo", "someone/board", "--dry-run", "--out", tmp_path / "kept", env=env)
    assert res.returncode == 0, res.stderr
    assert "data/results.jsonl" in res.stdout and "README.md" in res.stdout and "runs would be uploaded" in res.stdout
    assert (tmp_path / "kept" / "eval-learn-export.json").is_file()


HUB_REPO = os.environ.get("EVALLEARN_HUB_TEST_REPO")


@pytest.mark.skipif(not (HUB_REPO and os.environ.get("HF_TOKEN")),
                    reason="needs network, HF_TOKEN and EVALLEARN_HUB_TEST_REPO (a dataset repo you may write to)")
def test_push_then_pull_round_trips_through_the_hub(board_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    res = eval_learn("push", board_dir, "--repo", HUB_REPO, "--out", tmp_path / "export", env=env)
    assert res.returncode == 0, res.stderr
    res = eval_learn("pull", HUB_REPO, "--out", tmp_path / "pulled", env=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pulled" / "data" / "results.jsonl").read_text() == \
        (tmp_path / "export" / "data" / "results.jsonl").read_text()
    board = lb.load_board([tmp_path / "pulled"])
    assert {e.source for e in board.entries} == {HUB_REPO} and len(board.entries) == 4
