"""A self-contained HTML report for one run: before/after table with CIs and sample images."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from PIL import Image

from ..results import MetricResult, RunResults
from ..store import ImageStore, atomic_write_bytes


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4g}"


def _with_ci(r: MetricResult | None) -> str:
    if r is None:
        return "–"
    if r.value is None:
        return "no value"
    return f"{_fmt(r.value)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"


def _thumb(images: ImageStore, key: str, size: int = 96) -> str:
    if not images.has(key):
        return ""
    im = Image.fromarray(images.get(key)).resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" width="{size}">'


def write_report(run_dir: Path, results: RunResults, images: ImageStore, requests, n_samples: int = 24) -> Path:
    esc = html.escape
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
    from ..probes.report import probe_html

    probes = probe_html(results)
    samples = "".join(
        f'<figure>{_thumb(images, r.key)}<figcaption>{esc(r.prompt)}<br>seed {r.seed}</figcaption></figure>'
        for r in list(requests)[:n_samples]
    )
    run = results.run
    seed = "–" if results.seeds.run_seed is None else results.seeds.run_seed
    warnings = "".join(f"<p><b>Note:</b> {esc(w)}</p>" for w in results.warnings)
    environment = results.environment.model_dump()
    timings = results.timings.model_dump()
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>eval-learn: {esc(run.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} figure{{display:inline-block;margin:4px;width:110px;
font-size:10px}} code{{font-size:11px}}</style></head><body>
<h1>{esc(run.name)} <small>{esc(run.spec_hash or '')}</small></h1>
<p>model <b>{esc(results.model.ref)}</b> · technique <b>{esc(results.technique.name)}</b>
 · concept <b>{esc(results.concept_name)}</b> ({esc(str(results.concept_kind))})
 · seed {seed}</p>
{warnings}
<h2>Metrics</h2><table><tr><th>metric</th><th>before (base) [95% CI]</th><th>after [95% CI]</th><th>Δ</th>
<th>n before / after</th><th>judges</th></tr>{''.join(rows)}</table>
<p>[95% CI]: percentile bootstrap over the n images scored · Δ = after − before · ↑/↓: the better direction<br>
{meanings}</p>
{bad}
{probes}
<h2>Samples (after)</h2>{samples}
<h2>Environment</h2><pre>{esc(json.dumps(environment, indent=2, default=str))}</pre>
<h2>Timings (s)</h2><pre>{esc(json.dumps(timings, indent=2, default=str))}</pre>
</body></html>"""
    path = Path(run_dir) / "report.html"
    atomic_write_bytes(path, page.encode())
    return path
