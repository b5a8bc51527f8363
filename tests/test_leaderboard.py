"""``eval-learn leaderboard``: runs found in suite folders (``_base`` skipped, failed cells noted),
technique settings labelled by what differs from the defaults, erasure beside retention with CIs
and n, the Pareto front, the probes, and the HTML / CSV / Markdown outputs with their plots."""

import csv
import io
import json
import re

import pytest
from _board_fixtures import metric, results, write_board
from helpers import eval_learn

from evallearn.errors import UserError
from evallearn.report import leaderboard as lb
from evallearn.report.plots import Point, nice_ticks, scatter_svg


@pytest.fixture
def board_dir(tmp_path):
    return write_board(tmp_path / "suite")


def test_runs_in_a_suite_folder_skip_base_and_note_failed_cells(board_dir):
    board = lb.load_board([board_dir])
    assert [e.results.run.name for e in board.entries] == ["sld-max", "uce-circle", "uce-shape", "uce-weak"]
    assert {e.source for e in board.entries} == {"toy-board"}  # the suite's name
    assert board.concepts() == ["cross", "circle"]
    assert any("cell esd-cross failed (RuntimeError: boom)" in n for n in board.notes)
    # the setting: the params that differ from the technique's defaults (UCE's lamb is 0.5 by default)
    labels = {e.results.run.name: e.label for e in board.entries}
    assert labels == {"sld-max": "sld (preset=max, concept_from_run=true)", "uce-circle": "uce (guide=shape)",
                      "uce-shape": "uce (guide=shape)", "uce-weak": "uce (guide=shape, lamb=0.05)"}


def test_concept_table_puts_erasure_beside_retention_with_ci_n_and_delta(board_dir):
    board = lb.load_board([board_dir])
    header, rows = lb.concept_rows(board, "cross")
    assert header == ["technique (setting)", "ua ↑ (erasure)", "ira ↑ (retention)", "probe verdict", "★"]
    by = {r[0]: r for r in rows}
    assert by["base model toy (before erasure)"][1:3] == ["0.000 [0.000, 0.000] n=8", "0.875 [0.750, 1.000] n=24"]
    assert by["uce (guide=shape)"][1:3] == ["0.750 [0.500, 1.000] n=8 Δ+0.750", "0.875 [0.750, 1.000] n=24 Δ+0.000"]
    assert by["uce (guide=shape, lamb=0.05)"][2] == "0.938 [0.875, 1.000] n=24 Δ+0.062"
    # Pareto front on (ua, ira): sld (0.25, 0.8125) is beaten on both by uce-shape (0.75, 0.875)
    assert [r[0] for r in rows if r[-1] == "★"] == ["uce (guide=shape)", "uce (guide=shape, lamb=0.05)"]
    ph, pr = lb.probe_rows_text(board, "circle")
    assert ph == ["technique (setting)", "standard_prompt", "noise_based", "verdict", "recovered by"]
    assert pr == [["uce (guide=shape)", "0.125 [0.000, 0.375] n=8 (chance 0.25)",
                   "0.500 [0.250, 0.750] n=8 (chance 0.25) recovers", "guidance-based avoidance", "noise_based"]]
    assert lb.probe_rows_text(board, "cross") == ([], [])


def test_csv_has_one_row_per_run_metric_and_probe(board_dir):
    board = lb.load_board([board_dir])
    rows = list(csv.DictReader(io.StringIO(lb.to_csv(board))))
    assert len(rows) == 4 * 2 + 2 and tuple(rows[0]) == lb.FIELDS
    ua = next(r for r in rows if r["run"] == "uce-weak" and r["metric"] == "ua")
    assert (ua["aspect"], float(ua["value"]), float(ua["ci_low"]), float(ua["ci_high"]), ua["n"]) == \
        ("erasure", 0.5, 0.25, 0.75, "8")
    assert (float(ua["before"]), float(ua["delta"]), ua["setting"], ua["source"]) == \
        (0.0, 0.5, "guide=shape, lamb=0.05", "toy-board")
    noise = next(r for r in rows if r["metric"] == "noise_based")
    assert (noise["aspect"], noise["chance"], noise["recovers"], noise["verdict"]) == \
        ("probe recovery", "0.25", "True", "guidance-based avoidance")
    # a probe's row carries its base-model result and delta as a metric's does
    assert (float(noise["before"]), noise["before_n"], float(noise["delta"])) == (0.875, "8", 0.5 - 0.875)
    assert json.loads(ua["params"]) == {"guide": "shape", "lamb": 0.05}


def test_html_is_one_offline_file_with_the_plots(board_dir, tmp_path):
    run = next(p for p in board_dir.iterdir() if p.name.startswith("uce-weak"))
    (run / "report.html").write_text("<html></html>")
    files = lb.write(lb.load_board([board_dir]), tmp_path / "out", ["html", "csv", "md"])
    page = (tmp_path / "out" / "leaderboard.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<script" not in page \
        and "<link" not in page
    scatters = re.findall(r'<svg [^>]*class="plot scatter" id="([^"]+)" data-points="(\d+)"', page)
    assert scatters == [("scatter-cross", "4"), ("scatter-circle", "2")]  # runs + the base model
    assert re.search(r'class="plot bars" id="probes-circle" data-bars="2"', page)
    assert "cell esd-cross failed" in page and "there is no composite score" in page
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', page)  # the runs' own reports, relative to the page
    assert links == [(f"../suite/{run.name}/report.html", "uce-weak")]
    assert (tmp_path / "out" / links[0][0]).resolve() == (run / "report.html").resolve()
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| uce (guide=shape) | 0.750 [0.500, 1.000] n=8 Δ+0.750 |" in md
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (tmp_path / "out" / link).read_text().startswith("<svg")
    assert sorted(p.name for p in files) == ["leaderboard.csv", "leaderboard.html", "leaderboard.md",
                                            "probes-circle.svg", "scatter-circle.svg", "scatter-cross.svg"]


def test_scatter_places_points_on_the_axes():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(42.0, 53.0) == [42.0, 44.0, 46.0, 48.0, 50.0, 52.0]
    svg = scatter_svg([Point("a", 0.5, 0.25, 0.25, 0.75, 0.0, 0.5)], "x", "y", "t")
    # plot area x 58..444 (386 px), y 28..296 (268 px), both axes [0, 1]
    assert '<circle cx="251.0" cy="229.0"' in svg
    assert '<line x1="154.5" y1="229.0" x2="347.5" y2="229.0"' in svg  # the x interval
    assert '<line x1="251.0" y1="296.0" x2="251.0" y2="162.0"' in svg  # the y interval


def test_other_sources_and_seeds_are_told_apart(board_dir, tmp_path):
    other = tmp_path / "pulled"
    res = results("uce-shape", "uce", {"guide": "shape"}, "cross", metric(0.7, 0.6, 0.8, 8), metric(0.9, 0.8, 1, 24))
    res.save(other / "runs" / "uce-shape-x" / "results.json")
    (other / lb.EXPORT_MANIFEST).write_text(json.dumps({"repo": "someone/their-board"}))
    board = lb.load_board([board_dir, other])
    labels = [e.label for e in board.of("cross")]
    assert "uce (guide=shape) · [someone/their-board]" in labels and "uce (guide=shape) · [toy-board]" in labels


def test_axes_can_be_chosen_and_a_wrong_one_is_one_line(board_dir):
    board = lb.load_board([board_dir], erasure="ua", retention="ua")
    assert [c.key for c in board.axes("cross")] == ["ua", "ua"]
    with pytest.raises(UserError, match="--retention clip: no such metric on concept 'cross'"):
        lb.load_board([board_dir], retention="clip")


def test_command_writes_the_files_and_refuses_bad_input(board_dir, tmp_path):
    res = eval_learn("leaderboard", board_dir, "--out", tmp_path / "lb", "--format", "html,csv")
    assert res.returncode == 0, res.stderr
    assert "cell esd-cross failed" in res.stderr and "wrote" in res.stdout
    assert sorted(p.name for p in (tmp_path / "lb").iterdir()) == ["leaderboard.csv", "leaderboard.html"]
    for args, needle in (((board_dir, "--format", "pdf"), "--format 'pdf': choose from html, csv, md"),
                         ((tmp_path / "nothing",), "is neither a results.json nor a folder"),
                         ((tmp_path / "lb",), "no results.json under")):
        res = eval_learn("leaderboard", *args, "--out", tmp_path / "x")
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and needle in res.stderr, res.stderr


def test_leaderboard_and_push_dry_run_load_no_torch(board_dir, tmp_path):
    from test_imports import _cli, _loaded

    for args in (("leaderboard", board_dir, "--out", tmp_path / "lb"),
                 ("push", board_dir, "--repo", "someone/board", "--dry-run")):
        res = _cli(*args, cwd=tmp_path, block=True)
        assert res.returncode == 0 and _loaded(res) == "", (args, res.stderr)


def test_runs_disagreeing_on_the_base_model_are_noted(board_dir):
    run = next(p for p in board_dir.iterdir() if p.name.startswith("uce-weak"))
    data = json.loads((run / "results.json").read_text())
    data["metrics"]["ira"]["before"]["value"] = 0.5
    (run / "results.json").write_text(json.dumps(data))
    board = lb.load_board([board_dir])
    assert any("different base-model values for ira (0.875 vs 0.500" in n for n in board.notes)
    assert "different base-model values for ira" in lb.to_html(board)
