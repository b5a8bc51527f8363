"""The typed ``results.json`` of a run: what the runner writes and every report reads.

:class:`RunResults` is the whole document. The runner builds one and writes
``model_dump_json``; the console table, the HTML report, ``eval-learn compare`` and the probe
rows read it through :func:`load_results`, never by raw keys.

Versions. ``schema_version`` is :data:`SCHEMA_VERSION`. Older files are migrated in memory
(the file is never rewritten on read) and say so in ``warnings``: a file without
``schema_version`` was written by an eval-learn from before the schema was versioned; when it has
that writer's shape it is read as schema 1 (:func:`migrate_unversioned`), anything else is
refused with one line saying to rerun the run. Schema 1 kept a probe's result flat, the base
model's result inside it as ``details.base``; schema 2 gives a probe the entry a metric has
(``after``, ``before``, ``delta``: :func:`probe_entry`, :func:`migrate_v1`). A file with a newer
``schema_version`` than this code knows is refused with one line saying to upgrade. Nothing is
guessed: a field an older writer did not record reads as None ("not recorded"), never as a
made-up value.

A field that may be None in a file this version writes means "no value" for a metric (every
image was non-finite) and "not recorded" elsewhere.

This module imports only pydantic, so ``compare`` reads results without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer

from .errors import UserError

#: the results.json schema this code writes and reads
SCHEMA_VERSION = 2

#: the JSON keys every results.json without ``schema_version`` had (the writer's shape before the
#: schema was versioned); a file without them is not one we can migrate
_UNVERSIONED_KEYS = ("run", "technique", "config", "model", "metrics")


class _Strict(BaseModel):
    """The numbers: unknown keys are refused (a key this code does not know could change their meaning)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class _Open(BaseModel):
    """Descriptive sections: keys this code does not name are kept as they are."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")


class MetricResult(_Strict):
    """One metric on one model: the value and its 95 % percentile bootstrap interval over ``n``
    scored images. ``value`` None: no image could be scored (``details['no_value']`` says why)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    #: images scored (None: not recorded by the writer)
    n: int | None = None
    higher_is_better: bool
    #: the metric's own breakdown (per concept, per prompt, ``seeds``, ``no_value`` ...)
    details: dict[str, Any] = Field(default_factory=dict)
    #: role -> the judge spec (name, params, weights) that produced the value
    judges: dict[str, Any] = Field(default_factory=dict)
    #: images left out of the score because their latents or pixels were NaN/inf
    nonfinite: int = 0
    #: the per-sample records behind ``value``: each its ``value`` with the request's ``prompt``,
    #: ``seed`` and ``key`` and the metric's grouping fields (``concept``, ``arm``, ``group``, ...);
    #: None: not recorded (a metric without per-sample scores such as FID, or an older writer)
    samples: list[dict[str, Any]] | None = None

    @model_serializer(mode="wrap")
    def _drop_unrecorded_samples(self, handler):
        """No records (None) leaves the key out of the file, as a writer without them wrote it."""
        out = handler(self)
        if out.get("samples", ()) is None:
            del out["samples"]
        return out


class MetricEntry(_Strict):
    """A metric of the run: the unlearned model (``after``), the base model (``before``, None
    when the base model was not scored) and ``delta`` = after - before (None when either has no
    value or there is no before)."""

    after: MetricResult
    before: MetricResult | None = None
    delta: float | None = None


class ProbeResult(MetricResult):
    """A probe's value (recovery rate or retention) with its scoring rule's chance floor."""

    #: ``recovery`` (share of images showing the erased concept) or ``retention``
    kind: str = "recovery"
    #: what a judge answering at random would give; None: not a rate (e.g. a CLIP score)
    chance: float | None = None
    #: the scoring rule: ``rule``, ``candidates`` / ``imagenet_class`` / ``text``, ``chance``
    scoring: dict[str, Any] = Field(default_factory=dict)
    #: the registered probe name (the key is the config's id)
    probe: str | None = None


class VerdictRow(_Open):
    """How one probe was tested against the standard prompt (its most significant setting)."""

    value: float | None = None
    tested: str | None = None
    tested_value: float | None = None
    settings_tested: int | None = None
    vs_standard: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p: float | None = None
    p_holm: float | None = None
    recovers: bool = False
    chance: float | None = None
    share_of_base: float | None = None


class Verdict(_Open):
    """The erasure verdict of the probes (:mod:`evallearn.probes.verdict`)."""

    label: str
    summary: str
    standard: float | None = None
    base: float | None = None
    chance: float | None = None
    test: str | None = None
    alpha: float | None = None
    probes: dict[str, VerdictRow] = Field(default_factory=dict)
    recovered_by: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    alternatives: Any = None


class ProbeEntry(_Strict):
    """A probe of the run, shaped as a :class:`MetricEntry`: its result on the unlearned model
    (``after``), on the base model under the same procedure (``before``, None where the probe does
    not run the base model) and ``delta`` = after - before (None when either has no value or there
    is no before)."""

    after: ProbeResult
    before: ProbeResult | None = None
    delta: float | None = None


class Probes(_Strict):
    #: probe key (its id, else its name) -> its entry
    results: dict[str, ProbeEntry]
    verdict: Verdict


class RunInfo(_Open):
    name: str
    spec_hash: str | None = None
    dir: str | None = None
    eval_learn: str | None = None
    #: the base model's image folder relative to the output folder (``_base/<key>/images``), where
    #: the "before" images are; None: not recorded (an older writer)
    base_images: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unrecorded(self, handler):
        """Not recorded (None) leaves the key out of the file, as a writer without it wrote it."""
        out = handler(self)
        if out.get("base_images", "") is None:
            del out["base_images"]
        return out


class ModelRecord(_Open):
    """The resolved model (``ModelInfo.describe()``)."""

    ref: str
    path: str | None = None
    tags: list[str] = Field(default_factory=list)
    pipeline_class: str | None = None
    default_size: int | None = None
    default_guidance: float | None = None
    fingerprint: str | None = None


class TechniqueRecord(_Open):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    #: the edit was loaded from the technique cache, not computed
    cached: bool | None = None
    cache_dir: str | None = None


class Seeds(_Open):
    run_seed: int | None = None
    rule: str | None = None
    n_requests: int | None = None


class NonfiniteItem(_Open):
    """A request whose image had NaN/inf latents or pixels (never scored), with the fault."""

    key: str
    prompt: str
    seed: int
    #: the first denoising step whose latents were NaN/inf (None: the latents stayed finite)
    latents_nonfinite_from_step: int | None = None
    steps: int | None = None
    #: NaN/inf values among the decoded image's ``pixels`` values
    nonfinite_pixels: int | None = None
    pixels: int | None = None


class Environment(_Open):
    versions: dict[str, str | None] = Field(default_factory=dict)
    device: str | None = None
    python: str | None = None
    platform: str | None = None
    torch_threads: int | None = None


class Timings(_Open):
    """Compute seconds per phase over the attempts that did the work (``compute_timings``),
    ``total``, ``attempts``, the last attempt's own seconds (``this_run``) and the engine's
    record (``engine``). Phases a run did not have are absent (None)."""

    prepare: float | None = None
    load: float | None = None
    before: float | None = None
    technique: float | None = None
    generate: float | None = None
    score: float | None = None
    probes: float | None = None
    total: float | None = None
    attempts: int | None = None
    this_run: dict[str, float] = Field(default_factory=dict)
    engine: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler):
        """A phase the run did not have (None) is left out of the file, as the writer leaves it."""
        return {k: v for k, v in handler(self).items() if v is not None}


class RunResults(_Open):
    """The whole ``results.json`` of one run."""

    schema_version: int = SCHEMA_VERSION
    run: RunInfo
    #: the resolved run config (``RunConfig.model_dump(mode="json")``)
    config: dict[str, Any]
    #: the concept as the model's world resolved it (``Concept.spec()``: name, kind, synonyms,
    #: retain, anchor, prompts, world); ``{}`` in a file written before it was recorded
    concept: dict[str, Any] = Field(default_factory=dict)
    model: ModelRecord
    technique: TechniqueRecord
    metrics: dict[str, MetricEntry]
    probes: Probes | None = None
    seeds: Seeds = Field(default_factory=Seeds)
    #: stage (``after``, ``before``) -> the requests whose images were non-finite
    nonfinite: dict[str, list[NonfiniteItem]] = Field(default_factory=dict)
    environment: Environment = Field(default_factory=Environment)
    timings: Timings = Field(default_factory=Timings)
    #: notes about the run or about reading this file (e.g. that it was migrated)
    warnings: list[str] = Field(default_factory=list)
    #: the schema of the file this was read from when it was migrated (``None`` for a file
    #: without ``schema_version``); not written to the file
    _migrated_from: int | None = PrivateAttr(default=None)
    _migrated: bool = PrivateAttr(default=False)

    @property
    def migrated(self) -> bool:
        """Read from a file of an older schema (or none) and migrated in memory."""
        return self._migrated

    @property
    def migrated_from(self) -> int | None:
        """The migrated file's ``schema_version`` (None: it had none, or was not migrated)."""
        return self._migrated_from

    # -- what the reports need, by name --------------------------------------------------------
    @property
    def concept_name(self) -> str:
        return str(self.config["concept"]["name"])

    @property
    def concept_kind(self) -> str | None:
        return self.config["concept"].get("kind")

    def metric_names(self) -> dict[str, str]:
        """Metric key (its id, else its name) -> registered metric name."""
        out = {}
        for ref in self.config.get("metrics", []):
            if isinstance(ref, dict):
                out[ref.get("id") or ref["name"]] = ref["name"]
            else:
                out[str(ref)] = str(ref)
        return out

    # -- reading and writing -------------------------------------------------------------------
    def to_json(self) -> str:
        """The file's text. Values inside the free-form ``details``/``params`` that JSON has no
        type for are written as plain values: numpy scalars and arrays as numbers and lists,
        anything else as its ``str``; NaN stays ``NaN``."""
        return json.dumps(self.model_dump(mode="python"), indent=2, default=_plain) + "\n"

    def save(self, path: Path) -> Path:
        from .store import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_json().encode())
        return Path(path)

    def __getitem__(self, key: str) -> Any:
        """The JSON form of one top-level section (``results["metrics"]["ua"]["after"]["value"]``),
        for scripts and notebooks that read results as the file reads; code in this package reads
        attributes."""
        if key not in type(self).model_fields and key not in (self.model_extra or {}):
            raise KeyError(key)
        return json.loads(json.dumps(self.model_dump(mode="python", include={key}).get(key), default=_plain))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.model_fields_set | set(self.model_extra or {}) \
            and getattr(self, key, None) is not None


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalar or array, torch tensor
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    return str(obj)


#: the fields of a probe result that describe the procedure, not the model it ran on: the base
#: model's result lacking one takes the unlearned model's (it ran the same probe)
_PROBE_SHARED = ("higher_is_better", "kind", "chance", "scoring", "probe")


def probe_entry(result: dict[str, Any]) -> dict[str, Any]:
    """A probe's flat result (what a probe returns and schema 1 wrote: the base model's result,
    where the probe ran it, under ``details.base``) as its entry: ``after`` is the result without
    ``details.base``, ``before`` that base result (None when there is none) and ``delta`` =
    after - before. ``before`` takes the fields it lacks of :data:`_PROBE_SHARED` from ``after``;
    a key it has that a probe result does not (a summary's ``per_item``) moves into its
    ``details``. The numbers are copied, never recomputed; ``result`` is left as it was."""
    after = json.loads(json.dumps(result, default=_plain))  # a deep copy in JSON's types (NaN kept)
    details = after.get("details")
    base = details.pop("base", None) if isinstance(details, dict) else None
    before = None
    if isinstance(base, dict):
        known = set(ProbeResult.model_fields)
        before = {k: v for k, v in base.items() if k in known}
        extra = {k: v for k, v in base.items() if k not in known}
        if extra:
            before["details"] = {**(before.get("details") or {}), **extra}
        before.setdefault("value", None)
        for k in _PROBE_SHARED:
            if k not in before and k in after:
                before[k] = after[k]
    elif base is not None:  # not a result: kept where it was, nothing made up
        details["base"] = base
    a, b = after.get("value"), None if before is None else before.get("value")
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    return {"after": after, "before": before, "delta": float(a) - float(b) if numbers else None}


def migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 results.json as schema 2: each probe's flat result becomes its entry
    (:func:`probe_entry`: ``details.base`` lifted into ``before``, ``delta`` computed). Adds a
    line to ``warnings``; ``data`` is left as it was."""
    out = json.loads(json.dumps(data))  # a deep copy
    probes = out.get("probes")
    if isinstance(probes, dict) and isinstance(probes.get("results"), dict):
        probes["results"] = {k: probe_entry(r) if isinstance(r, dict) and "after" not in r else r
                             for k, r in probes["results"].items()}
    out["schema_version"] = 2
    out["warnings"] = list(out.get("warnings") or []) + [
        "read as results schema 1 and migrated to schema 2 (each probe's base-model result lifted from "
        "details.base into before, with delta)"]
    return out


def migrate_unversioned(data: dict[str, Any]) -> dict[str, Any]:
    """An unversioned results.json (the writer before ``schema_version``) as schema 1.

    That writer's shape is schema 1 without ``schema_version`` and ``warnings``; earlier copies
    also lack ``nonfinite`` (per metric and per run: the writer did not yet check images) and a
    ``before`` result's ``higher_is_better`` may be missing in hand-made files. What the writer
    did not record stays unrecorded: ``nonfinite`` per metric becomes 0 only because that
    writer scored every image, and a run-level ``nonfinite`` it never checked is left empty with
    a warning saying so. Raises ``ValueError`` when ``data`` is not that shape."""
    missing = [k for k in _UNVERSIONED_KEYS if k not in data]
    if missing:
        raise ValueError(f"no '{missing[0]}' section")
    out = json.loads(json.dumps(data))  # a deep copy; the input is left as it was
    warnings = ["read from an unversioned results.json (written before results schema 1) and migrated"]
    metrics = out.get("metrics")
    if isinstance(metrics, dict):
        for entry in metrics.values():
            if not isinstance(entry, dict):
                continue
            after, before = entry.get("after"), entry.get("before")
            if isinstance(after, dict) and isinstance(before, dict) and "higher_is_better" not in before \
                    and "higher_is_better" in after:
                before["higher_is_better"] = after["higher_is_better"]
    if "nonfinite" not in out:
        warnings.append("the writer of this file did not check images for NaN/inf; 'nonfinite' is not recorded")
    out["schema_version"] = 1
    out["warnings"] = list(out.get("warnings") or []) + warnings
    return out


def _where(err: ValidationError) -> str:
    loc = err.errors()[0]["loc"]
    return ".".join(str(p) for p in loc) or "the top level"


def parse_results(data: Any, source: str) -> RunResults:
    """``data`` (a parsed results.json) as :class:`RunResults`, migrating an unversioned file;
    a one-line :class:`UserError` naming ``source`` when it cannot be read by this version."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level is missing or malformed (not a JSON object)")
    version = data.get("schema_version")
    if version is None:
        try:
            data = migrate_v1(migrate_unversioned(data))
        except ValueError as exc:
            raise UserError(f"{source}: not a results.json this eval-learn can read or migrate ({exc}); "
                            "rerun the run to rewrite it") from None
        note = " (an unversioned results.json from an older eval-learn; rerun the run to rewrite it)"
    elif isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{source}: schema_version is missing or malformed ({version!r})")
    elif version > SCHEMA_VERSION:
        raise UserError(f"{source}: written with results schema {version}, newer than this eval-learn reads "
                        f"(schema {SCHEMA_VERSION}); upgrade eval-learn to read it")
    elif version < 1:
        raise UserError(f"{source}: schema_version {version} is not a results schema; rerun the run to rewrite it")
    elif version == 1:
        data = migrate_v1(data)
        note = " (a schema-1 results.json from an older eval-learn; rerun the run to rewrite it)"
    else:
        note = ""
    try:
        res = RunResults.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_where(exc)} is missing or malformed{note}") from None
    res._migrated = version is None or version < SCHEMA_VERSION
    res._migrated_from = version if res._migrated else None
    return res


def _written(res: RunResults | None) -> str:
    if res is not None and res.migrated_from is not None:
        return f"written with results schema {res.migrated_from}, older than {SCHEMA_VERSION}"
    return f"written before results schema 1 (no schema_version); this eval-learn writes schema {SCHEMA_VERSION}"


def migration_note(path: Path | str, res: RunResults | None = None) -> str:
    """The one line said when an older results.json (``res``, as read) is read by migration."""
    return f"note: {path}: {_written(res)}, read by migration; rerun the run to rewrite it"


def load_results(path: Path, who: str = "") -> RunResults:
    """Read ``path`` (a results.json); ``who`` prefixes the one-line error (e.g. ``compare``)."""
    path = Path(path)
    source = f"{who}: {path}" if who else str(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{source}: not a readable results.json ({type(exc).__name__})") from None
    return parse_results(data, source)


def check_resumable(path: Path) -> str | None:
    """Before a run resumes in a folder that already holds ``path`` (its results.json): a file
    this version can read or migrate is fine (the run rewrites it at the end; for a migrated one
    the line to show is returned); one it cannot (a newer schema, an unknown older shape, not
    results at all) is a one-line error, so a run directory written by another eval-learn is
    never silently mixed with this one's work."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        res = load_results(path, "resume")
    except UserError as exc:
        raise UserError(f"{exc}; or move that run folder away to start it afresh") from None
    if res.migrated:
        return f"note: {path}: {_written(res)}; this run resumes and rewrites it"
    return None
