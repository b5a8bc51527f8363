"""A corpus of malformed and hostile configs and command lines.

Each case must end as the README promises: exit code 2, one line of error output starting
``error:`` that names the key, file or value, and no traceback. Most cases run in-process through
the real entry point (:func:`evallearn.cli.main`, which is what ``eval-learn`` calls); a handful
run as real subprocesses, as do Ctrl-C and the multi-problem config. Every case fails at or before
``validate``'s checks, so nothing loads weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import eval_learn, run_cli

from evallearn.config import MAX_CONFIG_NODES, safe_join
from evallearn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BASE = "concept: {name: cat}\n"
TOY = "model: toy\nconcept: {name: cross, retain: [circle, square]}\nmetrics: [ua]\n"
#: 327 bytes of nested YAML aliases: nine levels of nine-fold references, ~4e8 values expanded
ALIAS_BOMB = ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    + "concept: {name: cat}\n")


main = run_cli  # eval-learn ARGS in this process (tests/helpers.py)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_error(code, out, err, needle):
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    got = lines(err) + lines(out)
    assert len(got) == 1, got
    assert got[0].startswith("error: "), got
    assert needle in got[0], got


def _csv(path: Path, rows: str, encoding="utf-8") -> Path:
    path.write_bytes(rows.encode(encoding))
    return path


def _asr_on(source: Path) -> str:
    return TOY.replace("metrics: [ua]", "metrics: [{name: asr, params: {prompts: csv, prompts_params: "
                       "{source: '" + str(source) + "'}}}]")


# (id, file name, content (str | bytes | callable(tmp_path) -> str), --set items, needle)
CASES = [
    ("binary", "c.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", [], "not UTF-8"),
    ("latin1", "c.yaml", "concept: {name: caf\xe9}\n".encode("latin-1"), [], "not UTF-8"),
    ("nul", "c.yaml", "concept: {name: cat}\n\x00\n", [], "NUL"),
    ("bad_yaml", "c.yaml", "concept: [1, 2\n", [], "not valid YAML"),
    ("bad_json", "c.json", '{"concept": ', [], "not valid JSON"),
    ("deep_json", "c.json", "[" * 100_000 + "]" * 100_000, [], "c.json"),
    ("top_list", "c.yaml", "- a\n- b\n", [], "top level must be a mapping"),
    ("alias_bomb", "c.yaml", ALIAS_BOMB, [], "YAML aliases"),
    ("alias_loop", "c.yaml", "a: &x [*x]\n" + BASE, [], "refers to itself"),
    ("huge", "c.yaml", BASE + "# " + "x" * (1 << 20) + "\n", [], "at most"),
    ("unknown_key", "c.yaml", BASE + "metrix: []\n", [], "unknown key 'metrix'"),
    ("no_concept", "c.yaml", "seed: 1\n", [], "missing required key 'concept'"),
    ("probe_id_up", "c.yaml", BASE + "probes: [{name: standard_prompt, id: '../../../../x'}]\n", [],
     "'probes[0].id'"),
    ("probe_id_abs", "c.yaml", BASE + "probes: [{name: standard_prompt, id: /etc/evil}]\n", [], "'probes[0].id'"),
    ("metric_id_slash", "c.yaml", BASE + "metrics: [{name: ua, id: a/b}]\n", [], "'metrics[0].id'"),
    ("metric_name_up", "c.yaml", BASE + "metrics: ['../ua']\n", [], "'metrics[0].name'"),
    ("name_slash", "c.yaml", BASE + "name: ../../up\n", [], "'name'"),
    ("name_dot", "c.yaml", BASE + "name: .hidden\n", [], "'name'"),
    ("name_long", "c.yaml", BASE + "name: " + "n" * 300 + "\n", [], "at most 128 bytes"),
    ("concept_up", "c.yaml", "concept: {name: ../../x}\n", [], "'concept.name'"),
    ("concept_newline", "c.yaml", 'concept: {name: "a\\nb"}\n', [], "'concept.name'"),
    ("retain_concept", "c.yaml", "concept: {name: cat, retain: [dog, Cat]}\n", [], "'concept.retain'"),
    ("retain_synonym", "c.yaml", "concept: {name: cat, synonyms: [kitty], retain: [kitty]}\n", [],
     "'concept.retain'"),
    ("seed_huge", "c.yaml", BASE + f"seed: {2**70}\n", [], "'seed'"),
    ("seed_negative", "c.yaml", BASE + "seed: -1\n", [], "'seed'"),
    ("device_banana", "c.yaml", BASE + "device: banana\n", [], "'device' ('banana')"),
    ("device_cuda_x", "c.yaml", BASE + "device: 'cuda:x'\n", [], "'device'"),
    ("steps_zero", "c.yaml", BASE + "sampler: {steps: 0}\n", [], "'sampler.steps'"),
    ("height_tiny", "c.yaml", BASE + "sampler: {height: 4}\n", [], "'sampler.height'"),
    ("scheduler", "c.yaml", BASE + "sampler: {scheduler: foo}\n", [], "'sampler.scheduler'"),
    ("dtype", "c.yaml", BASE + "dtype: float64\n", [], "'dtype'"),
    ("batch_zero", "c.yaml", BASE + "sampler: {batch_size: 0}\n", [], "'sampler.batch_size'"),
    ("eta_inf", "c.yaml", BASE + "sampler: {eta: .inf}\n", [], "'sampler.eta'"),
    ("guidance_nan", "c.yaml", BASE, ["sampler.guidance_scale=.nan"], "'sampler.guidance_scale'"),
    ("output_dir_empty", "c.yaml", BASE + "output_dir: ''\n", [], "'output_dir'"),
    ("set_bad_yaml", "c.yaml", BASE, ["sampler.steps=[1"], "--set 'sampler.steps=[1'"),
    ("set_tab", "c.yaml", BASE, ["concept.name=a\tb"], "tab"),
    ("set_double_dot", "c.yaml", BASE, ["sampler..steps=3"], "sampler..steps"),
    ("set_leading_dot", "c.yaml", BASE, [".steps=3"], ".steps"),
    ("set_no_equals", "c.yaml", BASE, ["sampler.steps"], "expected KEY=VALUE"),
    ("set_not_mapping", "c.yaml", BASE, ["sampler=3", "sampler.steps=2"], "'sampler' is not a mapping"),
    ("set_alias_loop", "c.yaml", BASE, ["seed=&a [*a]"], "refers to itself"),
    ("set_bad_value", "c.yaml", BASE, ["seed=abc"], "'seed'"),
    ("unknown_technique", "c.yaml", BASE + "technique: {name: nonesuch}\n", [], "unknown technique 'nonesuch'"),
    ("unknown_metric", "c.yaml", BASE + "metrics: [nonesuch]\n", [], "unknown metric 'nonesuch'"),
    ("metric_param", "c.yaml", BASE + "metrics: [{name: ua, params: {foo: 1}}]\n", [],
     "unknown key 'metrics[0].params.foo'"),
    ("max_prompts_neg", "c.yaml", BASE + "metrics: [{name: ua, params: {max_prompts: -1}}]\n", [],
     "'metrics[0].params.max_prompts'"),
    ("images_zero", "c.yaml", BASE + "metrics: [{name: ira, params: {images_per_prompt: 0}}]\n", [],
     "'metrics[0].params.images_per_prompt'"),
    ("duplicate_metric", "c.yaml", BASE + "metrics: [ua, ua]\n", [], "appears twice"),
    ("height_33_toy", "c.yaml", TOY + "sampler: {height: 33}\n", [], "sampler.height 33: not a multiple of 2"),
    ("height_8_toy", "c.yaml", TOY + "sampler: {width: 8}\n", [], "sampler.width 8: below 16"),
    ("cuda_99", "c.yaml", TOY + "device: 'cuda:99'\n", [], "device 'cuda:99'"),
    ("output_dir_file", "c.yaml", lambda tmp: TOY + f"output_dir: '{tmp / 'c.yaml'}'\n", [], "is a file"),
    ("output_dir_under_file", "c.yaml", lambda tmp: TOY + f"output_dir: '{tmp / 'c.yaml' / 'runs'}'\n", [],
     "cannot be created"),
    ("missing_model_folder", "c.yaml", "model: ./no/such/folder\n" + BASE, [], "does not exist"),
    ("csv_latin1", "c.yaml",
     lambda tmp: _asr_on(_csv(tmp / "p.csv", "prompt\ncaf\xe9 cross\n", "latin-1")), [], "not UTF-8"),
    ("csv_seed_abc", "c.yaml",
     lambda tmp: _asr_on(_csv(tmp / "p.csv", "prompt,evaluation_seed\na cross,3\na plus,abc\n")), [],
     "row 2: seed 'abc' is not a whole number"),
    ("csv_seed_float", "c.yaml",
     lambda tmp: _asr_on(_csv(tmp / "p.csv", "prompt,evaluation_seed\na cross,1.5\n")), [],
     "row 1: seed '1.5' is not a whole number"),
    ("dataset_limit_neg", "c.yaml",
     lambda tmp: _asr_on(_csv(tmp / "p.csv", "prompt\na cross\n")).replace("}}}]", ", limit: -1}}}]"), [],
     "limit"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    _, fname, content, sets, needle = case
    if case[0] == "cuda_99" and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 CUDA devices")
    if callable(content):
        content = content(tmp_path)
    path = tmp_path / fname
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = ["validate", path]
    for item in sets:
        args += ["--set", item]
    monkeypatch.chdir(tmp_path)  # a case that slipped through would write under tmp_path
    assert_one_error(*main(args, monkeypatch, capsys), needle)


def test_corpus_has_at_least_40_cases():
    assert len(CASES) + len(COMMAND_LINES) + len(BAD_RESULTS) >= 40


COMMAND_LINES = [
    (["validate", "--bogus", "x.yaml"], "No such option: --bogus"),
    (["run"], "Missing argument 'config'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["validate", "no/such/config.yaml"], "config file not found"),
    (["run", "no/such/config.yaml"], "config file not found"),
    (["compare", "no/such/results"], "neither a results.json nor a folder"),
]


@pytest.mark.parametrize("args,needle", COMMAND_LINES, ids=[" ".join(a) for a, _ in COMMAND_LINES])
def test_bad_command_line_is_one_line_exit_2(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_one_error(*main(args, monkeypatch, capsys), needle)


GOOD_METRIC = {"after": {"value": 0.5, "higher_is_better": True, "ci_low": 0.4, "ci_high": 0.6, "n": 4},
               "before": None}
GOOD = {"run": {"name": "r"}, "technique": {"name": "t"}, "config": {"concept": {"name": "c"}},
        "model": {"ref": "toy"}, "metrics": {"ua": GOOD_METRIC}}
BAD_RESULTS = [
    ("not_json", b"{", "not a readable results.json"),
    ("not_utf8", b"\xff\xfe{}", "not a readable results.json"),
    ("a_list", b"[]", "the top level"),
    ("no_run", json.dumps({**GOOD, "run": {}}).encode(), "run.name"),
    ("metrics_list", json.dumps({**GOOD, "metrics": []}).encode(), "metrics"),
    ("value_string", json.dumps({**GOOD, "metrics": {"ua": {"after": {"value": "x", "higher_is_better": True}}}})
     .encode(), "metrics.ua.after"),
]


@pytest.mark.parametrize("case", BAD_RESULTS, ids=[c[0] for c in BAD_RESULTS])
def test_compare_on_a_malformed_results_json_is_one_line(case, tmp_path, monkeypatch, capsys):
    _, content, needle = case
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_bytes(content)
    code, out, err = main(["compare", tmp_path], monkeypatch, capsys)
    assert_one_error(code, out, err, needle)
    assert str(path) in err


def test_compare_still_reads_a_good_results_json(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(GOOD))
    code, out, err = main(["compare", tmp_path], monkeypatch, capsys)
    assert code == 0 and "0.500" in out, (out, err)


def test_several_problems_are_all_named_one_line_each(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("metricz: [ua]\nseed: -3\ndevice: banana\n")  # and no concept
    code, out, err = main(["validate", path], monkeypatch, capsys)
    got = lines(err)
    assert code == 2 and not out and "Traceback" not in err
    assert len(got) == 4, got
    assert all(line.startswith(f"error: {path}: ") for line in got), got
    assert any("unknown key 'metricz'" in line for line in got)
    assert any("missing required key 'concept'" in line for line in got)
    assert any("'seed'" in line for line in got) and any("'device'" in line for line in got)


def test_model_checks_name_every_problem(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(TOY + f"sampler: {{height: 33, width: 8}}\noutput_dir: '{path}'\n")
    code, out, err = main(["validate", path], monkeypatch, capsys)
    got = lines(err)
    assert code == 2 and len(got) == 3, got
    assert "sampler.height 33" in got[0] and "sampler.width 8" in got[1] and "is a file" in got[2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    path = tmp_path / "c.yaml"
    path.write_text(TOY + f"output_dir: '{ro}'\n")
    assert_one_error(*main(["validate", path], monkeypatch, capsys), "is not writable")


def test_the_alias_bomb_is_small_and_expands_past_the_cap():
    assert len(ALIAS_BOMB.encode()) < 500
    assert 9**9 > MAX_CONFIG_NODES


# -- real subprocesses ------------------------------------------------------------------------


@pytest.mark.parametrize("content,sets,needle", [
    (b"\xff\xfe\x00binary", [], "not UTF-8"),
    (ALIAS_BOMB.encode(), [], "YAML aliases"),
    (BASE.encode(), ["sampler.steps=[1"], "not valid YAML"),
    ((BASE + "probes: [{name: standard_prompt, id: '../../../../x'}]\n").encode(), [], "'probes[0].id'"),
], ids=["binary", "alias_bomb", "set_bad_yaml", "probe_id_up"])
def test_subprocess_bad_config_is_one_line_exit_2(content, sets, needle, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    args = ["validate", path] + [a for s in sets for a in ("--set", s)]
    res = eval_learn(*args, cwd=tmp_path)
    assert_one_error(res.returncode, res.stdout, res.stderr, needle)


def test_subprocess_several_problems_one_line_each(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("metricz: [ua]\n")
    res = eval_learn("validate", path, cwd=tmp_path)
    got = lines(res.stderr)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(got) == 2, res.stderr
    assert "unknown key 'metricz'" in res.stderr and "missing required key 'concept'" in res.stderr


def test_ctrl_c_exits_130_with_a_resume_line(tmp_path):
    """SIGINT during a run: exit 130, a line saying what is kept and that a rerun resumes."""
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "evallearn.cli", "run", str(ROOT / "examples" /
                             "smoke_tiny_random.yaml"), "--set", f"output_dir={out}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(out.glob("smoke-tiny-random-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    last = lines(stderr)[-1]
    assert last.startswith("interrupted:") and "kept" in last and "resume" in last, stderr


# -- validate loads, builds and fetches nothing ---------------------------------------------------


def test_validate_builds_no_tiny_random_weights(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("EVALLEARN_CACHE", str(cache))
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "examples" / "smoke_tiny_random.yaml").read_text().replace(
        "output_dir: runs", f"output_dir: '{tmp_path / 'runs'}'"))
    code, out, err = main(["validate", cfg], monkeypatch, capsys)
    assert code == 0, err
    assert "20 images" in out and "built" in out
    assert list(cache.iterdir()) == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("what", ["model", "dataset"])
def test_validate_never_downloads_from_the_hub(what, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, *args, local_files_only=False, **kw):
        calls.append(local_files_only)
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    cfg = tmp_path / "c.yaml"
    if what == "model":
        cfg.write_text("model: someone/not-cached\n" + BASE)
        expect = "validate` downloads nothing"
    else:
        cfg.write_text(TOY.replace("metrics: [ua]", "metrics: [{name: asr, params: {prompts: csv, prompts_params: "
                                                    "{source: someone/not-cached}}}]"))
        expect = "nothing is downloaded here"
    code, out, err = main(["validate", cfg], monkeypatch, capsys)
    assert_one_error(code, out, err, expect)
    assert calls == [True]


# -- paths never leave their folder ----------------------------------------------------------


def test_safe_join_refuses_to_leave_its_root(tmp_path):
    assert safe_join(tmp_path, "a-1.json") == tmp_path / "a-1.json"
    assert safe_join(tmp_path, "a b", "c.json") == tmp_path / "a b" / "c.json"
    for bad in ("..", ".", "", "../x", "/etc/evil", "a/b", "a\\b", "a\0b", "a\nb", "x" * 256):
        with pytest.raises(UserError):
            safe_join(tmp_path, bad)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(UserError, match="outside"):
        safe_join(tmp_path, "link", "x.json")


# -- toy training resumes only from plain tensors ------------------------------------------------


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_toy_training_state_with_a_pickle_payload_runs_nothing(how, tmp_path):
    from evallearn_toy.train import load_training_state

    marker = tmp_path / "pwned"
    state = tmp_path / "state.pt"
    payload = {"step": 3, "unet": _Payload(str(marker))}
    if how == "torch.save":
        torch.save(payload, state)
    else:
        state.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match="state.pt"):
        load_training_state(state)
    assert not marker.exists()
    # the same file loaded the old way runs its payload (the raw pickle then fails its magic number)
    with contextlib.suppress(RuntimeError):
        torch.load(state, weights_only=False)
    assert marker.exists()


def test_toy_training_state_of_a_real_optimiser_still_loads(tmp_path):
    from functools import partial

    from evallearn_toy.train import load_training_state

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(max, 0.5))
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    torch.save({"unet": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": 7},
               tmp_path / "state.pt")
    state = load_training_state(tmp_path / "state.pt")
    assert state["step"] == 7
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01, foreach=True)
    opt2.load_state_dict(state["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_unbuilt_tiny_random_is_described_as_it_is_built(tiny_pipe_dir):
    from evallearn.models.loading import _TINY_INFO, inspect_folder, resolve_model

    built = inspect_folder("tiny-random", tiny_pipe_dir)
    for key, value in _TINY_INFO.items():
        if key != "default_guidance":
            assert getattr(built, key) == value, key
    assert built.min_size == 2 * 2 * 2  # VAE factor 2, one halving, a 2x2 deepest level
    assert resolve_model("toy").min_size == 16  # VAE factor 2, two halvings: 8 px is a 1x1 bottleneck


def test_disk_full_during_a_run_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import errno

    from evallearn import runner

    def full(config, console=None, report=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "results.json"))

    monkeypatch.setattr(runner, "run", full)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE)
    code, out, err = main(["run", cfg], monkeypatch, capsys)
    assert_one_error(code, out, err, "results.json: No space left on device")
    assert "what was finished is kept" in err
