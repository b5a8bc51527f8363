"""``report.html`` of one run: one self-contained file (images inline, no script, nothing fetched).

Sections: the metrics before and after with their 95 % intervals, n and judges; the probes with
their chance floors and verdict, and each probe's grid (prompt × setting, whether the judge saw
the concept); for every metric that records its per-image samples, a before/after image grid of
its prompt set with the judge's label under each image; the resolved config and concept; the
environment and timings.

The "after" images are the run's ``images/``; the "before" images are the base model's, in the
folder the run recorded (``run.base_images``, relative to the output folder). Images are found by
the request key each sample records, so what is shown is exactly what was scored.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from ..results import MetricResult, ProbeResult, RunResults
from ..store import ImageStore, atomic_write_bytes

esc = html.escape

#: sample fields that are the judge's answer for an image, shown as its label, in this order
LABEL_FIELDS = ("predicted", "label", "answer", "detected")

_CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.grid{display:flex;flex-wrap:wrap;gap:8px}.pair{border:1px solid #ddd;padding:4px;font-size:11px;width:214px}
.pair .imgs{display:flex;gap:6px}.pair figure{margin:0;width:100px;text-align:center}
.pair img{width:96px;height:96px;image-rendering:pixelated;border:3px solid #ccc}
img.good{border-color:#2a9d4b}img.bad{border-color:#d1495b}.prompt{margin-top:3px;word-break:break-word}
td.hit{background:#f6c9cf}td.miss{background:#cdebd5}code{font-size:11px}pre{font-size:12px;background:#f7f7f7;
padding:8px;overflow:auto}small{color:#555}"""


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4g}"


def _with_ci(r: MetricResult | None) -> str:
    if r is None:
        return "–"
    if r.value is None:
        return "no value"
    return f"{_fmt(r.value)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"


def _thumb_uri(images: ImageStore | None, key: str, size: int = 96) -> str | None:
    """The stored image of ``key`` as a PNG data URI (at most ``size`` px; small images are
    scaled up without smoothing), None when it is not there."""
    if images is None or not images.has(key):
        return None
    im = Image.fromarray(images.get(key))
    if max(im.size) != size:
        im = im.resize((size, size), Image.NEAREST if max(im.size) < size else Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(images: ImageStore, key: str, size: int = 96) -> str:
    uri = _thumb_uri(images, key, size)
    return "" if uri is None else f'<img src="{uri}" width="{size}">'


def sample_label(sample: dict[str, Any] | None, metric_name: str = "") -> str:
    """The judge's label of one scored image: its answer (``predicted`` ...) and the image's score."""
    if sample is None:
        return "not scored"
    value = sample.get("value")
    answer = next((sample[f] for f in LABEL_FIELDS if sample.get(f) not in (None, "")), None)
    score = "–" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))
    if answer is not None:
        return f"{answer} · {score}"
    return f"{metric_name or 'score'} {score}"


def _verdict_class(sample: dict[str, Any] | None, higher_is_better: bool) -> str:
    """``good`` / ``bad`` for a 0/1 score (by the metric's direction), else no class."""
    v = None if sample is None else sample.get("value")
    if not isinstance(v, int | float) or v not in (0, 1):
        return ""
    return "good" if (v == 1) == higher_is_better else "bad"


def base_store(run_dir: Path, results: RunResults) -> tuple[ImageStore | None, str]:
    """The base model's image store of the run and a note when it cannot be found."""
    root = Path(run_dir).parent
    rec = results.run.base_images
    if rec:
        folder = root / rec
        return (ImageStore(folder), "") if folder.is_dir() else (None, f"the base images ({folder}) are not there")
    # an older writer did not record the folder: use the only one that holds the before samples' images
    keys = {s["key"] for m in results.metrics.values() if m.before is not None
            for s in (m.before.samples or []) if s.get("key")}
    if not keys:
        return None, ""
    folders = [f for f in sorted((root / "_base").glob("*/images")) if all((f / f"{k}.png").exists() for k in keys)]
    if len(folders) == 1:
        return ImageStore(folders[0]), ""
    return None, ("which base image folder this run used was not recorded, and "
                  f"{'none' if not folders else len(folders)} of {root / '_base'} hold its images")


def _figure(uri: str | None, label: str, cls: str, stage: str) -> str:
    img = f'<img class="{cls}" src="{uri}" alt="{esc(stage)}">' if uri else '<div class="missing">(no image)</div>'
    return f'<figure class="{stage}">{img}<figcaption><b>{esc(stage)}</b><br>{esc(label)}</figcaption></figure>'


def _spread(samples: list[dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    """Up to ``n`` samples by request key, taken in turn from each group (concept, group, arm) so
    every part of a prompt set is shown."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for s in samples:
        if s.get("key") and s["key"] not in seen:
            seen.add(s["key"])
            groups.setdefault(tuple(s.get(f) for f in ("concept", "group", "arm")), []).append(s)
    out: dict[str, dict[str, Any]] = {}
    queues = list(groups.values())
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                s = q.pop(0)
                out[s["key"]] = s
    return out


def image_grids(results: RunResults, after: ImageStore, before: ImageStore | None, n_samples: int = 12) -> str:
    """Per metric with samples: up to ``n_samples`` requests of its prompt set, each the base
    model's image and the unlearned model's side by side with the judge's label under each."""
    names = results.metric_names()
    parts = []
    for key, m in results.metrics.items():
        samples = m.after.samples or []
        if not samples:
            continue
        by_key_before = {s.get("key"): s for s in (m.before.samples or [])} if m.before is not None else {}
        shown = _spread(samples, n_samples)
        higher = m.after.higher_is_better
        name = names.get(key, key)
        pairs = []
        for k, s in shown.items():
            b = by_key_before.get(k)
            bfig = _figure(_thumb_uri(before, k), sample_label(b, name), _verdict_class(b, higher), "before") \
                if m.before is not None else ""
            afig = _figure(_thumb_uri(after, k), sample_label(s, name), _verdict_class(s, higher), "after")
            group = " · ".join(f"{f} {s[f]}" for f in ("concept", "group", "arm") if s.get(f) is not None)
            pairs.append(f'<div class="pair" data-key="{esc(k)}"><div class="imgs">{bfig}{afig}</div>'
                         f'<div class="prompt">{esc(s.get("prompt", ""))} · seed {esc(str(s.get("seed", "")))}'
                         f'{" · " + esc(group) if group else ""}</div></div>')
        label = key if name == key else f"{key} ({name})"
        parts.append(f'<section class="images" data-metric="{esc(key)}"><h3>{esc(label)}: {len(shown)} of '
                     f'{len(samples)} images</h3><div class="grid">{"".join(pairs)}</div></section>')
    if not parts:
        return ""
    return ("<h2>Images: before (base model) and after (unlearned model), per prompt set</h2>"
            "<p><small>Under each image: the judge's answer and the image's score for the metric; a green frame: "
            "the score counts for the better direction, red: against it.</small></p>" + "".join(parts))


def _probe_grid(key: str, r: ProbeResult, n_rows: int = 16) -> str:
    """Prompt × setting: whether the judge saw the concept (1) or not (0), the value for
    non-binary scores; the chosen setting (best of N by the selector) last."""
    d = r.details
    settings = d.get("settings") or {}
    prompts = d.get("prompts") or []
    per_item = d.get("per_item") or []
    if not (settings or per_item) or not prompts:
        return ""
    cols = list(settings)
    chosen = d.get("chosen") or []
    head = "".join(f"<th>{esc(c)}</th>" for c in cols) + ("<th>value (chosen setting)</th>" if per_item else "")
    rows = []
    for i, item in enumerate(prompts[:n_rows]):
        prompt, seed = (item[0], item[1]) if isinstance(item, list | tuple) and len(item) > 1 else (item, "")
        cells = []
        for c in cols:
            vals = settings[c].get("per_item") or []
            cells.append(_hit_cell(vals[i] if i < len(vals) else None))
        if per_item:
            cells.append(_hit_cell(per_item[i] if i < len(per_item) else None,
                                   chosen[i] if i < len(chosen) else None))
        rows.append(f"<tr><td>{esc(str(prompt))} · seed {esc(str(seed))}</td>{''.join(cells)}</tr>")
    more = f"<p><small>… {len(prompts) - n_rows} more prompts in results.json</small></p>" \
        if len(prompts) > n_rows else ""
    return (f'<details open class="probe-grid" data-probe="{esc(key)}"><summary>{esc(key)}: per prompt and setting '
            f"(1 = the judge saw the concept)</summary><table><tr><th>prompt</th>{head}</tr>{''.join(rows)}"
            f"</table>{more}</details>")


def _hit_cell(v: Any, note: str | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "<td>–</td>"
    cls = "hit" if v == 1 else "miss" if v == 0 else ""
    text = f"{v:.3g}" if isinstance(v, float) and v not in (0, 1) else str(int(v)) if v in (0, 1) else str(v)
    return f'<td class="{cls}">{esc(text)}{" (" + esc(str(note)) + ")" if note else ""}</td>'


def probe_grids(results: RunResults) -> str:
    if results.probes is None:
        return ""
    grids = "".join(_probe_grid(k, e.after) for k, e in results.probes.results.items())
    return f"<h3>Probe grids</h3>{grids}" if grids else ""


def write_report(run_dir: Path, results: RunResults, images: ImageStore, requests, n_samples: int = 12) -> Path:
    """Write ``run_dir/report.html`` (the runner's report hook)."""
    from ..probes.report import probe_html
    from .table import fmt_n, item_text, legend

    rows = []
    for key, m in results.metrics.items():
        a, b = m.after, m.before
        arrow = "↑" if a.higher_is_better else "↓"
        rows.append(
            f"<tr><td>{esc(key)} {arrow}</td><td>{_with_ci(b)}</td><td>{_with_ci(a)}</td>"
            f"<td>{_fmt(m.delta)}</td><td>{esc(fmt_n(b))} / {esc(fmt_n(a))}</td>"
            f"<td><code>{esc(json.dumps(a.judges, default=str))}</code></td></tr>"
        )
    meanings = "<br>".join(esc(line.strip()) for line in legend(results).plain.splitlines())
    bad = "".join(f"<h3>non-finite images, {esc(stage)} (not scored): {len(items)}</h3><ul>"
                  + "".join(f"<li>{esc(item_text(i))}</li>" for i in items) + "</ul>"
                  for stage, items in results.nonfinite.items() if items)
    probes = probe_html(results) + probe_grids(results)
    before, note = base_store(Path(run_dir), results)
    grids = image_grids(results, images, before, n_samples)
    if not grids:  # no metric recorded per-image samples: the first requests' images
        grids = "<h2>Samples (after)</h2>" + "".join(
            f'<figure>{_thumb(images, r.key)}<figcaption>{esc(r.prompt)}<br>seed {r.seed}</figcaption></figure>'
            for r in list(requests)[:n_samples])
    run = results.run
    seed = "–" if results.seeds.run_seed is None else results.seeds.run_seed
    warnings = "".join(f"<p><b>Note:</b> {esc(w)}</p>" for w in results.warnings + ([note] if note else []))
    config = yaml.safe_dump(results.config, sort_keys=False, allow_unicode=True)
    concept = yaml.safe_dump(results.concept, sort_keys=False, allow_unicode=True) if results.concept else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>eval-learn: {esc(run.name)}</title><style>{_CSS}</style></head><body>
<h1>{esc(run.name)} <small>{esc(run.spec_hash or '')}</small></h1>
<p>model <b>{esc(results.model.ref)}</b> · technique <b>{esc(results.technique.name)}</b>
 · concept <b>{esc(results.concept_name)}</b> ({esc(str(results.concept_kind))})
 · seed {seed}</p>
{warnings}
<h2>Metrics</h2><table class="metrics"><tr><th>metric</th><th>before (base) [95% CI]</th><th>after [95% CI]</th>
<th>Δ</th><th>n before / after</th><th>judges</th></tr>{''.join(rows)}</table>
<p>[95% CI]: percentile bootstrap over the n images scored · Δ = after − before · ↑/↓: the better direction<br>
{meanings}</p>
{bad}
{probes}
{grids}
<h2>Resolved config</h2><pre class="config">{esc(config)}</pre>
{f'<details><summary>Resolved concept (prompt sets)</summary><pre>{esc(concept)}</pre></details>' if concept else ''}
<h2>Environment</h2><pre>{esc(json.dumps(results.environment.model_dump(), indent=2, default=str))}</pre>
<h2>Timings (s)</h2><pre>{esc(json.dumps(results.timings.model_dump(), indent=2, default=str))}</pre>
</body></html>"""
    path = Path(run_dir) / "report.html"
    atomic_write_bytes(path, page.encode())
    return path


def rewrite_report(run_dir: Path, n_samples: int = 12) -> Path:
    """Write ``report.html`` again from a finished run folder's results.json and images."""
    from ..results import load_results

    run_dir = Path(run_dir)
    results = load_results(run_dir / "results.json", "report")
    return write_report(run_dir, results, ImageStore(run_dir / "images"), [], n_samples)
