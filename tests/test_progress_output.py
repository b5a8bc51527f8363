"""What a person sees: plain progress lines when stderr is not a terminal (CI, nohup, a log file)
and none of the libraries' own bars; compare, listings and help that cut nothing at 80 columns
and name only what exists; toy show labels in full."""

import os
import re
import time
from pathlib import Path

from helpers import eval_learn, write_config


def test_run_with_stderr_to_a_pipe_prints_plain_progress_lines(tmp_path):
    cfg = write_config(
        tmp_path / "smoke.yaml", name="smoke", model="tiny-random",
        technique={"name": "uce", "params": {"guide": " "}}, concept={"name": "cat", "retain": ["dog"]},
        metrics=[{"name": "clip_score", "params": {"prompt_set": "all", "images_per_prompt": 3}}],
        sampler={"steps": 2, "batch_size": 2, "height": 32, "width": 32}, output_dir=str(tmp_path / "runs"))
    # a fresh cache: the tiny weights are built (and saved) inside this run, as on a first run
    env = {**os.environ, "EVALLEARN_CACHE": str(tmp_path / "cache"), "EVALLEARN_PROGRESS_SECONDS": "0.05"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    env.pop("DIFFUSERS_VERBOSITY", None)
    res = eval_learn("run", cfg, env=env)  # stdout and stderr are pipes
    assert res.returncode == 0, res.stderr
    err = res.stderr
    # none of diffusers'/transformers'/the hub's own bars, no carriage returns, no colour codes
    for leak in ("Loading pipeline components", "Loading weights", "Writing model shards", "it/s]", "\r", "\x1b["):
        assert leak not in err, (leak, err)
    lines = err.splitlines()
    n = 6  # cat and dog, 3 images each
    for stage in ("base model", "after"):
        mine = [x for x in lines if x.startswith(f"smoke · generate ({stage}): ")]
        assert mine[0].startswith(f"smoke · generate ({stage}): 0/{n} (0%)"), mine
        assert re.match(rf"smoke · generate \({stage}\): {n}/{n} \(100%\) · [0-9.]+(/s| ?s each) · \S+ elapsed",
                        mine[-1]), mine
        counts = [int(re.search(r": (\d+)/", x).group(1)) for x in mine]
        assert counts == sorted(counts)  # done/total only grows
    assert "results:" in res.stdout


def test_toy_show_prints_no_library_bars(tmp_path):
    res = eval_learn("toy", "show", "--out", tmp_path / "g.png", "--per-shape", 1, "--steps", 2, "--scale", 1)
    assert res.returncode == 0, res.stderr
    assert "Loading pipeline components" not in res.stderr and "it/s]" not in res.stderr, res.stderr


def test_working_lines_while_a_silent_step_lasts(monkeypatch, capsys):
    from evallearn import progress

    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    monkeypatch.setenv("EVALLEARN_PROGRESS_SECONDS", "0.05")
    with progress.working("validate big.yaml"):
        time.sleep(0.4)
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 2 and all(x.startswith("validate big.yaml: still working (") for x in err), err
    with progress.working("validate small.yaml"):
        pass  # a step shorter than the interval prints nothing
    assert capsys.readouterr().err == ""


def test_validate_says_it_is_working(monkeypatch, capsys, tiny_pipe_dir, tiny_clip_dir, tmp_path):
    from evallearn import cli, progress, runner

    real = runner.prepare

    def slow_prepare(config):  # a large config: resolving its requests takes a while
        time.sleep(0.4)
        return real(config)

    monkeypatch.setattr(runner, "prepare", slow_prepare)
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    monkeypatch.setenv("EVALLEARN_PROGRESS_SECONDS", "0.1")
    cfg = write_config(tmp_path / "c.yaml", model=str(tiny_pipe_dir), concept={"name": "cat", "retain": ["dog"]},
                       metrics=[{"name": "clip_score", "params": {"clip_model": str(tiny_clip_dir)}}],
                       output_dir=str(tmp_path / "runs"))
    cli.validate(cfg)
    captured = capsys.readouterr()
    assert f"validate {cfg}: still working (" in captured.err
    assert "ok:" in captured.out


def test_plain_progress_lines_at_most_one_per_interval(monkeypatch):
    import io

    from evallearn.progress import PlainProgress

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with PlainProgress("cell", interval=10, stream=out) as prog:
        task = prog.add_task("generate (after)", total=40, completed=10)
        for _ in range(30):  # 30 images, one per second
            clock[0] += 1
            prog.advance(task, 1)
    lines = out.getvalue().splitlines()
    assert lines == [
        "cell · generate (after): 10/40 (25%) · 0s elapsed",
        "cell · generate (after): 20/40 (50%) · 1/s · 10s elapsed · ~20s left",
        "cell · generate (after): 30/40 (75%) · 1/s · 20s elapsed · ~10s left",
        "cell · generate (after): 40/40 (100%) · 1/s · 30s elapsed",
    ]


def _result(name, spec, tech, value, before):
    m = {"after": {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 24, "nonfinite": 0,
                   "higher_is_better": True},
         "before": {"value": before, "ci_low": before - 0.1, "ci_high": before + 0.1, "n": 24, "nonfinite": 0,
                    "higher_is_better": True},
         "delta": value - before}
    return {"run": {"name": name, "spec_hash": spec}, "technique": {"name": tech},
            "config": {"concept": {"name": "cross"}, "metrics": [{"name": "ua"}]},
            "model": {"ref": "toy"}, "metrics": {"ua": m}}


def test_compare_at_80_columns_keeps_run_names_shows_cis_specs_and_duplicates(tmp_path):
    import json

    long_a = "quickstart-uce-cross-synonyms-and-retain-0001"
    long_b = "quickstart-esd-cross-synonyms-and-retain-0002"
    for folder, name, spec, tech, v in (("a", long_a, "aaaa11112222", "uce", 0.75),
                                        ("b", long_b, "bbbb33334444", "esd", 0.5),
                                        ("copy-of-a", long_a, "aaaa11112222", "uce", 0.75)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(_result(name, spec, tech, v, 0.25)))
    res = eval_learn("compare", tmp_path, tmp_path / "b" / "results.json",
                     env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    assert max(len(x) for x in res.stdout.splitlines() if x[:1] in "┏┃┡│└") <= 80  # the tables fit
    for needle in (long_a, long_b, "aaaa11112222", "bbbb33334444", "0.750 [0.700, 0.800]",
                   "0.250 [0.150, 0.350]", "+0.500", "+0.250", "higher is better"):
        assert needle in res.stdout, (needle, res.stdout)
    # a folder given twice (b) counts once; two copies of one run are reported
    assert res.stdout.count(long_b) == 1 and res.stdout.count(long_a) == 2  # two copies of run a, one of b
    assert re.search(rf"^ #\d+  {long_a}$", res.stdout, re.M)  # the whole name on its line
    warning = [x for x in res.stderr.splitlines() if x.startswith("warning:")]
    assert len(warning) == 1 and "aaaa11112222" in warning[0] and "copy-of-a" in warning[0], res.stderr


def test_listings_at_80_columns_cut_no_parameter_name():
    from evallearn import registry

    for kind in ("technique", "metric", "probe", "judge"):
        res = eval_learn(f"{kind}s", env={**os.environ, "COLUMNS": "80"})
        assert res.returncode == 0, res.stderr
        for name, cls in registry.ALL[kind].items():
            assert re.search(rf"^{re.escape(name)}\b", res.stdout, re.M), (kind, name)
            for key, _, _ in cls.param_table():
                assert re.search(rf"^\s+{re.escape(key)}: ", res.stdout, re.M), (kind, name, key)
        assert "…" not in res.stdout


def test_sub_command_help_names_only_commands_that_exist():
    """A group's help lists exactly the commands it has (no prose naming a command that is gone)."""
    import importlib
    import re

    res = eval_learn("--help", env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0
    for group, module in (("sae", "evallearn.sae.cli"), ("toy", "evallearn_toy.cli")):
        app = importlib.import_module(module).app
        commands = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
        sub = eval_learn(group, "--help", env={**os.environ, "COLUMNS": "200"})
        assert sub.returncode == 0
        box = sub.stdout[sub.stdout.index("Commands"):]
        listed = sorted(m.group(1) for m in re.finditer(r"^│ (\S+)\s{2,}", box, re.M))
        assert listed == commands, (group, listed, commands)
        assert re.search(rf"^│ {group}\s", res.stdout, re.M), group
    assert "inspect" not in res.stdout + eval_learn("sae", "--help").stdout


def test_toy_show_labels_are_whole_words_that_fit_their_column():
    from PIL import Image, ImageDraw

    from evallearn_toy import COLOURS, SHAPES, STYLES
    from evallearn_toy.cli import LINE_H, cell_labels, grid_geometry

    assert cell_labels("circle", "yellow", "outlined") == ["circle", "outlined", "yellow"]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for scale in (1, 2, 4):
        cell, col_w, label_h, head_w = grid_geometry(scale)
        assert cell == 32 * scale and col_w >= cell
        for shape in SHAPES:
            for colour in COLOURS:
                for style in STYLES:
                    lines = cell_labels(shape, colour, style)
                    assert {shape, colour, style} <= set(lines)  # no word shortened
                    assert all(draw.textlength(x) + 2 <= col_w for x in lines)
                    assert len(lines) * LINE_H + 2 <= label_h


# -- docs links ---------------------------------------------------------------------------


DOCS_ROOT = Path(__file__).resolve().parents[1]
INLINE = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# a code span that names a file by a path leaving the page's folder: /abs/x.md, ../x.md, ~/x.md
FILE_SPAN = re.compile(r"`((?:/|\.\./|~/)[^`\s]*\.(?:md|py|ya?ml|json|csv|txt|ipynb))`")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)


def _pages():
    return [DOCS_ROOT / "README.md", *sorted((DOCS_ROOT / "docs").rglob("*.md"))]


def _targets(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks hold examples, not links
    return INLINE.findall(text) + REFERENCE.findall(text) + FILE_SPAN.findall(text)


def test_docs_links_stay_inside_the_repository_and_exist():
    bad = []
    for page in _pages():
        for target in _targets(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # http(s)://, mailto:, an anchor in the same page
            path = target.split("#", 1)[0]
            resolved = (DOCS_ROOT / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
            resolved = resolved.resolve()
            where = f"{page.relative_to(DOCS_ROOT)} -> {target}"
            if path.startswith(("/", "~")) or not resolved.is_relative_to(DOCS_ROOT):
                bad.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                bad.append(f"{where} (missing)")
    assert not bad, "\n".join(bad)


def test_the_link_check_catches_links_out_of_the_repository():
    # the checker itself: a link out of the repository and an absolute path are both found
    assert _targets("see [notes](../../shared/research/x.md) and [a](/etc/passwd)") == [
        "../../shared/research/x.md", "/etc/passwd"]
    assert _targets("[ref]: ../outside.md") == ["../outside.md"]
    assert _targets("notes: `/work/shared/research/x.md` and `../shared/y.md`; `~/.cache/evallearn`") == [
        "/work/shared/research/x.md", "../shared/y.md"]
