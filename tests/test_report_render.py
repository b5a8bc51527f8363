"""The pages as a browser shows them. The per-run report of a tiny toy run: a before/after image
grid per prompt set with the judge's label under each image (the labels are the samples in
results.json), the probe grids and the resolved config. The leaderboard and the report rendered
in headless Chromium (Debian's ``chromium``): a screenshot of the window's size with the plots
painted, and the plot elements in the rendered DOM. Skipped, saying so, where Chromium is absent."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from _board_fixtures import write_board
from PIL import Image

from evallearn.report import leaderboard as lb
from evallearn.report.html import rewrite_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package "
                                                              "`chromium`; .ci/run installs it where it can)")
WINDOW = (1200, 900)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """UCE on the toy cross: 4 UA prompts, 2 per IRA concept, 4 steps."""
    import torch

    from evallearn.config import parse_config
    from evallearn.report.html import write_report
    from evallearn.runner import run

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("render")
    cfg = parse_config({
        "name": "render", "model": "toy", "seed": 0, "output_dir": str(out),
        "technique": {"name": "uce", "params": {"guide": "shape"}},
        "concept": {"name": "cross", "kind": "object", "retain": ["circle", "square", "triangle"]},
        "metrics": [{"name": "ua", "params": {"max_prompts": 4}}, {"name": "ira", "params": {"max_prompts": 2}}],
        "sampler": {"scheduler": "ddim", "steps": 4, "batch_size": 32}}, "render")
    res = run(cfg, report=write_report)
    return res, out


def _pairs(page, metric):
    section = re.search(rf'<section class="images" data-metric="{metric}">(.*?)</section>', page, re.S).group(1)
    return re.findall(r'<div class="pair" data-key="([0-9a-f]+)">(.*?)</div></div>', section, re.S)


def test_report_shows_before_after_grids_with_the_judges_labels(toy_run):
    res, out = toy_run
    page = (out / f"render-{res.run.spec_hash}" / "report.html").read_text()
    assert res.run.base_images.startswith("_base/") and (out / res.run.base_images).is_dir()
    for key in ("ua", "ira"):
        m = res.metrics[key]
        after = {s["key"]: s for s in m.after.samples}
        before = {s["key"]: s for s in m.before.samples}
        pairs = _pairs(page, key)
        assert len(pairs) == len(after) == {"ua": 4, "ira": 6}[key]
        for k, body in pairs:
            # both images inline, and under each the judge's answer and the image's score from results.json
            assert body.count('src="data:image/png;base64,') == 2
            labels = re.findall(r"<figcaption><b>(before|after)</b><br>([^<]*)</figcaption>", body)
            assert labels == [("before", f"{before[k]['predicted']} · {before[k]['value']:.3g}"),
                              ("after", f"{after[k]['predicted']} · {after[k]['value']:.3g}")]
            assert after[k]["prompt"] in body
    # each IRA concept is in the grid
    assert {c for c in ("circle", "square", "triangle") if f"concept {c}" in page} == {"circle", "square", "triangle"}
    config = re.search(r'<pre class="config">(.*?)</pre>', page, re.S).group(1)
    assert "guide: shape" in config and "max_prompts: 4" in config


def test_probe_grid_is_prompt_by_setting(tmp_path):
    from _board_fixtures import BOARD, metric, probes, results

    from evallearn.report.html import write_report
    from evallearn.store import ImageStore

    p = probes(0.25, 0.5, "guidance-based avoidance", ["noise_based"])
    p["results"]["noise_based"]["after"]["details"].update({
        "prompts": [["a cross", 0], ["a red cross", 1]], "per_item": [1.0, 0.0], "chosen": ["eta=1", "eta=2"],
        "settings": {"eta=1": {"value": 0.5, "per_item": [1.0, 0.0]}, "eta=2": {"value": 0.0, "per_item": [0.0, 0.0]}}})
    name, tech, params, concept, ua, ira, _ = BOARD[0]
    res = results(name, tech, params, concept, metric(*ua, 8), metric(*ira, 24), p)
    page = write_report(tmp_path, res, ImageStore(tmp_path / "images"), []).read_text()
    grid = re.search(r'<details open class="probe-grid" data-probe="noise_based">(.*?)</details>', page, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", grid, re.S)
    assert re.findall(r"<th>([^<]*)</th>", rows[0]) == ["prompt", "eta=1", "eta=2", "value (chosen setting)"]
    assert re.findall(r"<td[^>]*>([^<]*)</td>", rows[1]) == ["a cross · seed 0", "1", "0", "1 (eta=1)"]
    assert re.findall(r"<td[^>]*>([^<]*)</td>", rows[2]) == ["a red cross · seed 1", "0", "0", "0 (eta=2)"]
    assert 'data-probe="standard_prompt"' not in page  # no per-prompt details recorded: no grid


def test_report_finds_base_images_of_a_file_that_did_not_record_them(toy_run):
    res, out = toy_run
    run_dir = out / f"render-{res.run.spec_hash}"
    data = (run_dir / "results.json").read_text()
    old = json.loads(data)
    del old["run"]["base_images"]
    (run_dir / "results.json").write_text(json.dumps(old))
    page = rewrite_report(run_dir).read_text()
    assert len(_pairs(page, "ua")) == 4 and page.count('<figure class="before"><img') == 4 + 6
    (run_dir / "results.json").write_text(data)


def _chromium(args, tmp_path):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@needs_chromium
def test_leaderboard_renders_in_chromium_with_its_plots(tmp_path):
    lb.write(lb.load_board([write_board(tmp_path / "suite")]), tmp_path / "out", ["html"])
    url = (tmp_path / "out" / "leaderboard.html").as_uri()
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url], tmp_path)
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    # the first setting's colour (#0072B2) is painted: its point, whiskers and legend marker
    assert (np.abs(img.astype(int) - (0, 114, 178)).sum(-1) < 30).sum() > 50
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    assert len(re.findall(r'<svg [^>]*class="plot scatter"', dom)) == 2
    assert len(re.findall(r'<svg [^>]*class="plot bars"', dom)) == 1
    assert dom.count('<g class="point"') == 4 + 2 and '<table class="board">' in dom


@needs_chromium
def test_run_report_renders_in_chromium(toy_run, tmp_path):
    res, out = toy_run
    url = (out / f"render-{res.run.spec_hash}" / "report.html").as_uri()
    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url], tmp_path)
    assert Image.open(shot).size == WINDOW
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    assert dom.count('<div class="pair"') == 4 + 6 and dom.count('src="data:image/png') == 2 * (4 + 6)
