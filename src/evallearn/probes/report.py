"""Probe rows for the CLI results table and the HTML report. Every probe number is shown with its
scoring rule's chance floor (what a judge answering at random would give: 1/#candidates for the
default forced choice), since a recovery rate means little without it."""

from __future__ import annotations

import html
import json
from typing import Any

from ..results import ProbeResult, Probes, RunResults


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.3f}"


def probes_of(results: RunResults | Probes | dict[str, Any] | None) -> Probes | None:
    """The probes section of ``results``: a :class:`RunResults`, its :class:`Probes`, or a mapping
    with a ``probes`` section (validated into :class:`Probes`); None when no probe ran."""
    if results is None or isinstance(results, Probes):
        return results
    if isinstance(results, RunResults):
        return results.probes
    raw = results.get("probes")
    return None if raw is None else Probes.model_validate(raw)


def floor_text(r: ProbeResult) -> str:
    """``chance 0.10`` for a rate, ``CLIP score`` for a similarity (no chance floor)."""
    if r.chance is not None:
        return f"chance {r.chance:.3g}"
    return "CLIP score, no chance floor" if r.scoring.get("rule") == "clip_score" else "chance –"


def _base_value(r: ProbeResult) -> float | None:
    """The base model's value where the probe ran it (``details.base``: the probe's result on the
    base model), else its neighbour accuracy (files written before interference recorded one)."""
    base = r.details.get("base")
    return base["value"] if base else r.details.get("base_neighbour_accuracy")


def probe_rows(results: RunResults | Probes | dict[str, Any] | None) -> list[tuple[str, ...]]:
    """(name, before, after, CI, Δ, n) rows: before = the base model where the probe ran it; the
    name carries the chance floor."""
    probes = probes_of(results)
    rows = []
    for key, r in (probes.results if probes is not None else {}).items():
        b = _base_value(r)
        arrow = "↑" if r.higher_is_better else "↓"
        rows.append((f"probe {key} {arrow} ({floor_text(r)})", _f(b), _f(r.value),
                     f"[{_f(r.ci_low)}, {_f(r.ci_high)}]",
                     "–" if b is None or r.value is None else f"{r.value - b:+.3f}", "?" if r.n is None else str(r.n)))
    return rows


def probe_html(results: RunResults | Probes | dict[str, Any] | None) -> str:
    probes = probes_of(results)
    if probes is None:
        return ""
    esc = html.escape
    v = probes.verdict
    rows = []
    for key, r in probes.results.items():
        base = r.details.get("base")
        settings = r.details.get("settings", {})
        per = "; ".join(f"{esc(k)}: {s['value']:.3f}" for k, s in settings.items())
        vs = v.probes.get(key)
        vs_txt = "" if vs is None or vs.vs_standard is None else (
            f"{esc(str(vs.tested or ''))}: {vs.vs_standard:+.3f} [{_signed(vs.ci_low)}, {_signed(vs.ci_high)}]"
            + (f", Holm p = {vs.p_holm:.2g}" if vs.p_holm is not None else ""))
        rows.append(f"<tr><td>{esc(key)} ({esc(r.kind)})</td><td>{esc(floor_text(r))}</td>"
                    f"<td>{_f(base and base['value'])}</td>"
                    f"<td>{_f(r.value)} [{_f(r.ci_low)}, {_f(r.ci_high)}]</td><td>{'?' if r.n is None else r.n}</td>"
                    f"<td>{vs_txt}</td><td><small>{per}</small></td>"
                    f"<td><code>{esc(json.dumps(r.judges, default=str))}</code></td></tr>")
    warn = "".join(f"<p><b>Warning:</b> {esc(w)}</p>" for w in v.warnings)
    alpha = 0.05 if v.alpha is None else v.alpha
    test = f"<p><small>{esc(v.test)} (α = {alpha})</small></p>" if v.test else ""
    return (f"<h2>Probes</h2><p><b>Verdict: {esc(v.label)}</b> — {esc(v.summary)}</p>{warn}{test}"
            "<table><tr><th>probe</th><th>chance floor</th><th>base model</th><th>erased [95% CI]</th><th>n</th>"
            "<th>vs standard prompt: tested setting, difference [95% CI]</th><th>per setting</th>"
            "<th>judges</th></tr>" + "".join(rows) + "</table>")
