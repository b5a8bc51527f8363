"""Probe rows for the CLI results table and the HTML report. Every probe number is shown with its
scoring rule's chance floor (what a judge answering at random would give: 1/#candidates for the
default forced choice), since a recovery rate means little without it."""

from __future__ import annotations

import html
import json


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def floor_text(r: dict) -> str:
    """``chance 0.10`` for a rate, ``CLIP score`` for a similarity (no chance floor)."""
    rule = (r.get("scoring") or {}).get("rule")
    if r.get("chance") is not None:
        return f"chance {r['chance']:.3g}"
    return "CLIP score, no chance floor" if rule == "clip_score" else "chance –"


def probe_rows(results: dict) -> list[tuple[str, ...]]:
    """(name, before, after, CI, Δ, n) rows: before = the base model where the probe ran it; the
    name carries the chance floor."""
    rows = []
    for key, r in results.get("probes", {}).get("results", {}).items():
        base = r["details"].get("base")
        b = base["value"] if base else r["details"].get("base_neighbour_accuracy")
        arrow = "↑" if r["higher_is_better"] else "↓"
        rows.append((f"probe {key} {arrow} ({floor_text(r)})", _f(b), _f(r["value"]),
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                     "–" if b is None else f"{r['value'] - b:+.3f}", str(r["n"])))
    return rows


def probe_html(results: dict) -> str:
    if "probes" not in results:
        return ""
    esc = html.escape
    v = results["probes"]["verdict"]
    rows = []
    for key, r in results["probes"]["results"].items():
        base = r["details"].get("base")
        settings = r["details"].get("settings", {})
        per = "; ".join(f"{esc(k)}: {s['value']:.3f}" for k, s in settings.items())
        vs = v.get("probes", {}).get(key)
        vs_txt = "" if not vs else (
            f"{esc(str(vs.get('tested', '')))}: {vs['vs_standard']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]"
            + (f", Holm p = {vs['p_holm']:.2g}" if "p_holm" in vs else ""))
        rows.append(f"<tr><td>{esc(key)} ({esc(r.get('kind', ''))})</td><td>{esc(floor_text(r))}</td>"
                    f"<td>{_f(base and base['value'])}</td>"
                    f"<td>{_f(r['value'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]</td><td>{r['n']}</td>"
                    f"<td>{vs_txt}</td><td><small>{per}</small></td>"
                    f"<td><code>{esc(json.dumps(r['judges'], default=str))}</code></td></tr>")
    warn = "".join(f"<p><b>Warning:</b> {esc(w)}</p>" for w in v.get("warnings", []))
    test = f"<p><small>{esc(v['test'])} (α = {v.get('alpha', 0.05)})</small></p>" if v.get("test") else ""
    return (f"<h2>Probes</h2><p><b>Verdict: {esc(v['label'])}</b> — {esc(v['summary'])}</p>{warn}{test}"
            "<table><tr><th>probe</th><th>chance floor</th><th>base model</th><th>erased [95% CI]</th><th>n</th>"
            "<th>vs standard prompt: tested setting, difference [95% CI]</th><th>per setting</th>"
            "<th>judges</th></tr>" + "".join(rows) + "</table>")
