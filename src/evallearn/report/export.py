"""The folder ``eval-learn push`` uploads as a Hugging Face Hub dataset repo, built locally.

Layout (``build_export``)::

    README.md                  the dataset card: YAML header (configs, tags, the eval_learn block
                               naming models, techniques, concepts, judges and versions), then
                               what is inside, how to load it, and the leaderboard tables
    eval-learn-export.json     the manifest: repo, eval-learn version, runs (``pull`` reads it)
    data/results.jsonl         the tidy table: one row per run × metric or probe (config "results")
    data/runs.jsonl            one row per run (config "runs")
    leaderboard.html/.csv/.md  the leaderboard of the exported runs, plots/ beside the Markdown
    runs/<run dir>/            results.json, config.yaml, report.html of each run;
                               with images: images/ and probes/images/ of the run
    _base/<key>/images/        with images: the base model's images the runs used

Others load the table with ``datasets.load_dataset("OWNER/NAME")`` (config ``results``) or
``load_dataset("OWNER/NAME", "runs")``; ``eval-learn pull`` brings the folder back and
``eval-learn leaderboard`` reads its ``runs/`` beside local runs, labelled by the repo.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import UserError
from ..store import atomic_write_bytes
from . import leaderboard as lb

#: Hub repo ids: OWNER/NAME, each part letters, digits, ``-``, ``_``, ``.``, not starting with
#: ``-`` or ``.``, no ``--`` or ``..``, at most 96 characters for the name
_REPO = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

#: what a run folder contributes to the export (besides images)
RUN_FILES = ("results.json", "config.yaml", "report.html")

RUN_FIELDS = ("source", "run", "spec_hash", "model", "technique", "setting", "params", "concept", "concept_kind",
              "seed", "verdict", "recovered_by", "metrics", "judges", "eval_learn", "path")


def check_repo(repo: str, who: str) -> str:
    """``repo`` when it is a Hub repo id OWNER/NAME, else a one-line error."""
    if not isinstance(repo, str) or not _REPO.match(repo) or repo.endswith((".git", ".")):
        raise UserError(f"{who}: --repo {repo!r} is not a Hub repo id OWNER/NAME (letters, digits, '-', '_', '.')")
    return repo


@dataclass
class Export:
    root: Path
    repo: str
    board: lb.Board
    files: list[Path]

    def listing(self) -> list[tuple[str, int]]:
        """(path in the repo, bytes) of every file, sorted."""
        return sorted((p.relative_to(self.root).as_posix(), p.stat().st_size) for p in self.files)


def _judge_names(res) -> list[str]:
    specs = [s for m in res.metrics.values() for s in m.after.judges.values()]
    if res.probes is not None:
        specs += [s for p in res.probes.results.values() for s in p.after.judges.values()]
    out = []
    for s in specs:
        if isinstance(s, dict):
            name = s.get("judge") or s.get("name") or "?"
            params = {k: v for k, v in s.items() if k not in ("judge", "name")}
            out.append(f"{name} {json.dumps(params, sort_keys=True, default=str)}" if params else str(name))
        else:
            out.append(str(s))
    return out


def card_facts(board: lb.Board) -> dict[str, Any]:
    """Models, techniques (with settings), concepts, judges and versions of the exported runs."""
    versions: dict[str, set[str]] = {}
    for e in board.entries:
        for pkg, v in e.results.environment.versions.items():
            if v is not None:
                versions.setdefault(pkg, set()).add(str(v))
        if e.results.run.eval_learn:
            versions.setdefault("eval-learn", set()).add(e.results.run.eval_learn)
    return {
        "models": sorted({e.model for e in board.entries}
                         | {str(e.results.config["base_model"]) for e in board.entries
                            if e.results.config.get("base_model")}),
        "techniques": sorted({f"{e.technique} ({e.setting_text})" for e in board.entries}),
        "concepts": sorted({e.concept for e in board.entries}),
        "judges": sorted({j for e in board.entries for j in _judge_names(e.results)}),
        "metrics": sorted({n for e in board.entries for n in e.results.metric_names().values()}),
        "probes": sorted({p.after.probe or k for e in board.entries if e.results.probes is not None
                          for k, p in e.results.probes.results.items()}),
        "versions": {pkg: sorted(v) for pkg, v in sorted(versions.items())},
        "runs": len(board.entries),
    }


def dataset_card(board: lb.Board, repo: str, title: str) -> str:
    facts = card_facts(board)
    header = {
        "pretty_name": title,
        "tags": ["eval-learn", "concept-erasure", "machine-unlearning", "text-to-image", "diffusion", "benchmark"],
        "configs": [
            {"config_name": "results", "default": True,
             "data_files": [{"split": "train", "path": "data/results.jsonl"}]},
            {"config_name": "runs", "data_files": [{"split": "train", "path": "data/runs.jsonl"}]},
        ],
        "eval_learn": {"export_version": 1, "exported_with": __version__, **facts},
    }

    def bullets(items: list[str]) -> str:
        return "\n".join(f"- `{i}`" for i in items) or "- (none)"

    versions = "\n".join(f"- {pkg}: {', '.join(v)}" for pkg, v in facts["versions"].items()) or "- (not recorded)"
    body = f"""# {title}

Concept-erasure results from eval-learn runs: {facts['runs']} runs, exported with
eval-learn {__version__}. Each number is a metric of the unlearned model with its 95 % percentile bootstrap
interval over the `n` images scored, beside the base model's value (`before`) and the change (`delta`).

## Load it

```python
from datasets import load_dataset

results = load_dataset("{repo}", "results", split="train")  # one row per run x metric or probe
runs = load_dataset("{repo}", "runs", split="train")        # one row per run
```

or `eval-learn pull {repo}` and then `eval-learn leaderboard <that folder> <your runs>` to put these results
beside yours. `runs/<run>/results.json` is each run's full typed results (schema in eval-learn's
`results.py`), `runs/<run>/report.html` its report, `leaderboard.html` the leaderboard (one offline file).

## Models

{bullets(facts['models'])}

## Techniques (setting = parameters that differ from the technique's defaults)

{bullets(facts['techniques'])}

## Concepts

{bullets(facts['concepts'])}

## Metrics and probes

{bullets(facts['metrics'] + facts['probes'])}

## Judges

{bullets(facts['judges'])}

## Versions

{versions}

## Columns of `results`

{', '.join(f'`{f}`' for f in lb.FIELDS)}. `aspect` says whether a metric measures erasure or retention
(`probe recovery` for probes, with their `chance` floor); there is no composite score.

"""
    board_md = lb.to_markdown(board, None, "Leaderboard").replace("# Leaderboard", "## Leaderboard", 1)
    board_md = re.sub(r"(?m)^(#{2,3}) ", lambda m: "#" + m[1] + " ", board_md.split("\n", 1)[1])
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body + \
        "## Leaderboard\n" + board_md


def _copy(src: Path, dst: Path, files: list[Path]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    files.append(dst)


def _run_dir_name(e: lb.Entry) -> str:
    return e.path.parent.name


def build_export(paths: list[Path], out: Path, repo: str, images: bool = False, who: str = "push",
                 title: str | None = None) -> Export:
    """Write the export of the runs under ``paths`` into ``out`` (emptied first if it holds a
    previous export; any other non-empty folder is refused)."""
    check_repo(repo, who)
    board = lb.load_board(paths, who=who)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / lb.EXPORT_MANIFEST).exists():
            raise UserError(f"{who}: {out} is not empty and holds no earlier export; give an empty or new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"eval-learn results: {repo.split('/', 1)[1]}"
    files: list[Path] = []
    names: dict[str, int] = {}
    rel: dict[int, str] = {}
    bases: set[Path] = set()
    for i, e in enumerate(board.entries):
        name = _run_dir_name(e)
        if name in names:  # two runs with one folder name (from two sources)
            name = f"{name}-{i}"
        names[name] = i
        src, dst = e.path.parent, out / "runs" / name
        rel[i] = f"runs/{name}/results.json"
        for f in RUN_FILES:
            if (src / f).is_file():
                _copy(src / f, dst / f, files)
        if images:
            for sub in ("images", "probes/images"):
                for png in sorted((src / sub).glob("*.png")) if (src / sub).is_dir() else []:
                    _copy(png, dst / sub / png.name, files)
            base = e.results.run.base_images
            root = src.parent
            if base and (root / base).is_dir():
                bases.add((root / base).resolve())
    for base in sorted(bases):
        key = base.parent.name
        for png in sorted(base.glob("*.png")):
            _copy(png, out / "_base" / key / "images" / png.name, files)
    # the tables and pages name the exported copies, not this machine's paths
    for i, e in enumerate(board.entries):
        e.path = Path(rel[i])
    recs = lb.records(board)
    data = out / "data"
    atomic_write_bytes(data / "results.jsonl", "".join(json.dumps(r) + "\n" for r in recs).encode())
    runs = []
    for i, e in enumerate(board.entries):
        res = e.results
        v = res.probes.verdict if res.probes is not None else None
        runs.append({"source": e.source, "run": res.run.name, "spec_hash": res.run.spec_hash, "model": e.model,
                     "technique": e.technique, "setting": e.setting_text,
                     "params": json.dumps(res.technique.params, sort_keys=True, default=str), "concept": e.concept,
                     "concept_kind": res.concept_kind, "seed": e.seed, "verdict": None if v is None else v.label,
                     "recovered_by": None if v is None else ", ".join(v.recovered_by),
                     "metrics": ", ".join(res.metrics), "judges": ", ".join(sorted(set(_judge_names(res)))),
                     "eval_learn": res.run.eval_learn, "path": rel[i]})
    atomic_write_bytes(data / "runs.jsonl", "".join(json.dumps(r) + "\n" for r in runs).encode())
    files += [data / "results.jsonl", data / "runs.jsonl"]
    files += lb.write(board, out, list(lb.FORMATS), title)
    atomic_write_bytes(out / "README.md", dataset_card(board, repo, title).encode())
    manifest = {"repo": repo, "export_version": 1, "eval_learn": __version__, "images": images,
                "runs": [{"run": e.results.run.name, "spec_hash": e.results.run.spec_hash, "path": rel[i]}
                         for i, e in enumerate(board.entries)]}
    atomic_write_bytes(out / lb.EXPORT_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    files += [out / "README.md", out / lb.EXPORT_MANIFEST]
    return Export(out, repo, board, sorted(set(files)))
