"""Probe rows for the CLI results table and the HTML report. Every probe number is shown with its
scoring rule's chance floor (what a judge answering at random would give: 1/#candidates for the
default forced choice), since a recovery rate means little without it."""

from __future__ import annotations

import html
import json
from typing import Any

from ..results import ProbeEntry, ProbeResult, Probes, RunResults, probe_entry


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.3f}"


def probes_of(results: RunResults | Probes | dict[str, Any] | None) -> Probes | None:
    """The probes section of ``results``: a :class:`RunResults`, its :class:`Probes`, or a mapping
    with a ``probes`` section (validated into :class:`Probes`; a probe's flat result, as a probe
    returns it, is first made its entry by :func:`~evallearn.results.probe_entry`); None when no
    probe ran."""
    if results is None or isinstance(results, Probes):
        return results
    if isinstance(results, RunResults):
        return results.probes
    raw = results.get("probes")
    if raw is None:
        return None
    entries = {k: r if not isinstance(r, dict) or "after" in r else probe_entry(r)
               for k, r in (raw.get("results") or {}).items()}
    return Probes.model_validate({**raw, "results": entries})


def floor_text(r: ProbeResult) -> str:
    """``chance 0.10`` for a rate, ``CLIP score`` for a similarity (no chance floor)."""
    if r.chance is not None:
        return f"chance {r.chance:.3g}"
    return "CLIP score, no chance floor" if r.scoring.get("rule") == "clip_score" else "chance –"


def _base_value(e: ProbeEntry) -> tuple[float | None, float | None]:
    """(before, Δ): the base model's value where the probe ran it (``before``) with the entry's
    ``delta``, else the interference probe's neighbour accuracy on the base model (files written
    before it recorded a ``before``) and the difference to it."""
    if e.before is not None:
        return e.before.value, e.delta
    b, a = e.after.details.get("base_neighbour_accuracy"), e.after.value
    return b, None if b is None or a is None else a - b


def probe_rows(results: RunResults | Probes | dict[str, Any] | None) -> list[tuple[str, ...]]:
    """(name, before, after, CI, Δ, n) rows: before = the base model where the probe ran it; the
    name carries the chance floor."""
    probes = probes_of(results)
    rows = []
    for key, e in (probes.results if probes is not None else {}).items():
        r = e.after
        b, delta = _base_value(e)
        arrow = "↑" if r.higher_is_better else "↓"
        rows.append((f"probe {key} {arrow} ({floor_text(r)})", _f(b), _f(r.value),
                     f"[{_f(r.ci_low)}, {_f(r.ci_high)}]", _signed(delta), "?" if r.n is None else str(r.n)))
    return rows


def probe_html(results: RunResults | Probes | dict[str, Any] | None) -> str:
    probes = probes_of(results)
    if probes is None:
        return ""
    esc = html.escape
    v = probes.verdict
    rows = []
    for key, e in probes.results.items():
        r = e.after
        settings = r.details.get("settings", {})
        per = "; ".join(f"{esc(k)}: {s['value']:.3f}" for k, s in settings.items())
        vs = v.probes.get(key)
        vs_txt = "" if vs is None or vs.vs_standard is None else (
            f"{esc(str(vs.tested or ''))}: {vs.vs_standard:+.3f} [{_signed(vs.ci_low)}, {_signed(vs.ci_high)}]"
            + (f", Holm p = {vs.p_holm:.2g}" if vs.p_holm is not None else ""))
        rows.append(f"<tr><td>{esc(key)} ({esc(r.kind)})</td><td>{esc(floor_text(r))}</td>"
                    f"<td>{_f(_base_value(e)[0])}</td>"
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
