"""The prompt-dataset interface and the file readers the datasets share.

A dataset is a component whose :meth:`PromptDataset.load` returns :class:`PromptRecord` s. Its
``source`` parameter is a local file (CSV, JSON or Parquet), a local folder holding one, or a
Hugging Face *dataset* id (read from the local cache; downloaded only when the hub is reachable
and ``HF_HUB_OFFLINE`` is unset). With no ``source`` on the toy model a dataset returns its
toy-world analogue; with no ``source`` elsewhere it is a one-line error naming the file to
provide and the set's public home.

The real files are never shipped with the package (licences are their authors'); their public
homes are listed in ``docs/datasets/``.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from ..components import Component, Params
from ..errors import UserError


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    #: the set's evaluation seed, where it has one (I2P, COCO-30k, UnlearnDiffAtk sets)
    seed: int | None = None
    #: the set's evaluation guidance scale, where it has one (I2P)
    guidance: float | None = None
    categories: tuple[str, ...] = ()
    #: anything else the set carries (a paired prompt, an adversarial prompt, questions, an image id)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class DatasetParams(Params):
    #: local file / folder or Hugging Face dataset id; None = the analogue the model's world gives
    source: str | None = None
    #: keep at most this many records (spread evenly over the set, order kept); 0 = all
    limit: int = Field(0, ge=0)


class PromptDataset(Component):
    Params: ClassVar[type[Params]] = DatasetParams
    #: where the real set lives (shown in errors and docs)
    home: ClassVar[str] = ""

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def load(self, ctx=None) -> list[PromptRecord]:
        """The records of ``source``; without one, the analogue that the world of ``ctx``'s model
        (a RunContext) gives for this dataset, when it has one."""
        if self.params.source:
            records = self.read(load_rows(self.params.source, self.name))
        else:
            records = analogue(self.name, ctx)
            if records is None:
                raise UserError(f"dataset '{self.name}': set `source` to a local file or dataset id ({self.home})")
        if not records:
            raise UserError(f"dataset '{self.name}': no prompts left after filtering (source: {self.params.source})")
        return take(records, self.params.limit)

    def read(self, rows: list[dict[str, str]]) -> list[PromptRecord]:
        raise NotImplementedError


def analogue(name: str, ctx) -> list[PromptRecord] | None:
    """What dataset ``name`` becomes on the world of ``ctx``'s model (``None``: no analogue)."""
    if ctx is None:
        return None
    from ..concepts.world import world_of

    return world_of(ctx.model).dataset_analogue(name, ctx.concept)


def take(items: list, limit: int) -> list:
    """At most ``limit`` items spread evenly over ``items`` (0 = all), in order."""
    if not limit or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


# -- readers --------------------------------------------------------------------------------


def _read_file(path: Path) -> list[dict[str, str]]:
    try:
        return _parse_file(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8") from None
    except (json.JSONDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a valid {path.suffix.lstrip('.').upper()} file: {exc}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None


def _parse_file(path: Path) -> list[dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            return [{(k or "").strip(): (v if v is not None else "") for k, v in row.items()} for row in reader]
    if suffix in (".json", ".jsonl"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
        if data and isinstance(data, list) and not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: expected a list of objects (one per prompt)")
        if isinstance(data, dict):  # e.g. COCO's captions_*.json: its "annotations" list
            data = data.get("annotations") or next((v for v in data.values() if isinstance(v, list)), [data])
        return list(data)
    if suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError:
            raise UserError(f"reading {path} needs pandas and pyarrow (pip install pandas pyarrow)") from None
        return pd.read_parquet(path).astype(object).where(lambda d: d.notna(), "").to_dict("records")
    raise UserError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv, .json, .jsonl or .parquet)")


def _hub_folder(repo_id: str, what: str) -> Path:
    from ..models.hub import cached_snapshot, download_snapshot
    from ..models.loading import fetch_allowed

    folder = cached_snapshot(repo_id, repo_type="dataset")
    if folder is not None:
        return folder
    if not fetch_allowed():
        raise UserError(f"dataset '{what}': '{repo_id}' is neither a local file nor in the local Hugging Face "
                        f"cache (nothing is downloaded here); run `hf download --repo-type dataset {repo_id}` "
                        "where there is network, or set source to a local file")
    try:
        return download_snapshot(repo_id, repo_type="dataset")
    except Exception:
        raise UserError(
            f"dataset '{what}': '{repo_id}' is neither a local file nor a cached Hugging Face dataset; run "
            f"`hf download --repo-type dataset {repo_id}` where there is network, or set source to a local file"
        ) from None


def load_rows(source: str, what: str = "dataset") -> list[dict[str, Any]]:
    """Rows of a local CSV/JSON/Parquet file, of the first such file in a folder, or of a hub dataset."""
    path = Path(source).expanduser()
    if not path.exists():
        if source.count("/") == 1 and not source.startswith((".", "/", "~")):
            path = _hub_folder(source, what)
        else:
            raise UserError(f"dataset '{what}': source file not found: {path}")
    if path.is_dir():
        files = sorted(p for ext in ("csv", "tsv", "json", "jsonl", "parquet") for p in path.rglob(f"*.{ext}"))
        if not files:
            raise UserError(f"dataset '{what}': no .csv/.json/.parquet file in {path}")
        path = files[0]
    return _read_file(path)


def column(rows: list[dict], names: tuple[str, ...], what: str, required: bool = True) -> str | None:
    """The first of ``names`` present in the rows (case-insensitive)."""
    if not rows:
        return None
    keys = {k.lower(): k for k in rows[0]}
    for n in names:
        if n.lower() in keys:
            return keys[n.lower()]
    if required:
        raise UserError(f"dataset '{what}': needs a column named one of {', '.join(names)}; found {', '.join(keys)}")
    return None


def as_int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def as_seed(value, where: str) -> int | None:
    """A per-prompt seed: empty is None; a whole number (``7``, ``7.0``) in 0..2**63-1 is kept;
    anything else (``abc``, ``1.5``, ``-3``) is a one-line error naming ``where``, never dropped
    or truncated."""
    if value is None or (isinstance(value, float) and value != value):  # NaN: an empty Parquet cell
        return None
    text = str(value).strip()
    if not text:
        return None
    if isinstance(value, bool) or not re.fullmatch(r"[+-]?[0-9]+(\.0*)?", text):
        raise UserError(f"{where}: seed {text!r} is not a whole number")
    seed = int(text.split(".")[0])
    if not 0 <= seed <= 2**63 - 1:
        raise UserError(f"{where}: seed {text!r} is outside 0..2**63-1")
    return seed


def as_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
