"""The terminal results table of one run, and the notes that make it readable on its own.

Each metric row shows the value before (base model) and after (unlearned model), each with its
95 % percentile bootstrap interval over the images it scored (``n``), the change, and the
direction in which the metric is better. Below the table: what each metric measures, and the
requests whose images were non-finite (never scored).
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..results import MetricResult, NonfiniteItem, RunResults

N_LISTED = 5  # non-finite requests listed by name; all are in results.json


def fmt_value(r: MetricResult | None) -> str:
    """``0.812 [0.750, 0.875]``, ``no value`` (nothing scorable) or ``–`` (not computed)."""
    if r is None:
        return "–"
    if r.value is None:
        return "no value"
    if r.ci_low is None or r.ci_high is None:
        return f"{r.value:.3f}"
    return f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def fmt_n(r: MetricResult | None) -> str:
    if r is None:
        return "–"
    return _count(r.n) + (f" (+{r.nonfinite} NaN)" if r.nonfinite else "")


def metric_names(results: RunResults) -> dict[str, str]:
    """Metric key (its id, else its name) -> registered metric name."""
    return results.metric_names()


def metric_meaning(name: str) -> str:
    from .. import registry

    try:
        return registry.metrics.get(name).description
    except Exception:  # a metric from a plugin that is not installed here
        return ""


def direction(higher_is_better: bool) -> str:
    return "↑ higher is better" if higher_is_better else "↓ lower is better"


def unscored(results: RunResults) -> list[str]:
    """Metric keys (``key (before)`` for the base model) that have no value: none of their
    images was finite."""
    out = []
    for key, m in results.metrics.items():
        if m.after.value is None:
            out.append(key)
        if m.before is not None and m.before.value is None:
            out.append(f"{key} (before)")
    return out


def results_table(results: RunResults) -> Table:
    t = Table(title=f"{results.run.name} · {results.technique.name} on "
                    f"'{results.concept_name}' · {results.model.ref}",
              caption="before: base model · after: unlearned model · [95% bootstrap CI over the n images "
                      "scored] · Δ = after − before · ↑/↓: the better direction",
              caption_justify="left")
    t.add_column("metric", justify="left")
    t.add_column("before\n[95% CI]", justify="right", no_wrap=True)
    t.add_column("after\n[95% CI]", justify="right", no_wrap=True)
    t.add_column("Δ", justify="right", no_wrap=True)
    t.add_column("n\nbefore/after", justify="right", no_wrap=True)
    any_bad = any(r is not None and r.nonfinite for m in results.metrics.values() for r in (m.after, m.before))
    if any_bad:
        t.add_column("NaN, not\nscored", justify="right", no_wrap=True)
    for key, m in results.metrics.items():
        a, b = m.after, m.before
        delta = m.delta
        row = [f"{key} {'↑' if a.higher_is_better else '↓'}", _two_lines(b), _two_lines(a),
               "–" if delta is None else f"{delta:+.3f}", f"{_n(b)}/{_n(a)}"]
        if any_bad:
            row.append(f"{_bad(b)}/{_bad(a)}")
        t.add_row(*row)
    from ..probes.report import probe_rows

    for name, before, after, ci, delta, n in probe_rows(results):
        t.add_row(name, before, f"{after}\n{ci}", delta, f"–/{n}", *(["–"] if any_bad else []))
    return t


def _two_lines(r: MetricResult | None) -> str:
    """The value over its interval, so the table fits 80 columns."""
    return fmt_value(r).replace(" [", "\n[", 1)


def _n(r: MetricResult | None) -> str:
    return "–" if r is None else _count(r.n)


def _bad(r: MetricResult | None) -> str:
    return "–" if r is None else str(r.nonfinite)


def legend(results: RunResults) -> Text:
    """One line per metric: what it measures and which way is better."""
    names = metric_names(results)
    lines = []
    for key, m in results.metrics.items():
        name = names.get(key, key)
        meaning = metric_meaning(name)
        label = key if name == key else f"{key} ({name})"
        meaning = meaning.rstrip(". ")
        lines.append(f"  {label}: {meaning + '; ' if meaning else ''}{direction(m.after.higher_is_better)}")
    return Text("\n".join(lines))


def nonfinite_lines(results: RunResults) -> list[str]:
    """The requests whose latents or pixels were NaN/inf: a count per stage and the first few."""
    lines = []
    for stage, items in results.nonfinite.items():
        if not items:
            continue
        label = "after (unlearned model)" if stage == "after" else "before (base model)"
        lines.append(f"non-finite {label}: {len(items)} image(s) had NaN/inf latents or pixels and were not "
                     "scored; all are listed in results.json under 'nonfinite'")
        for item in items[:N_LISTED]:
            lines.append(f"  {item_text(item)}")
        if len(items) > N_LISTED:
            lines.append(f"  … and {len(items) - N_LISTED} more")
    return lines


def item_text(item: NonfiniteItem) -> str:
    where = []
    if item.latents_nonfinite_from_step is not None:
        where.append(f"latents from step {item.latents_nonfinite_from_step} of {_count(item.steps)}")
    if item.nonfinite_pixels:
        where.append(f"{item.nonfinite_pixels}/{_count(item.pixels)} pixel values")
    return f"{item.prompt!r} seed {item.seed} ({', '.join(where) or 'non-finite'}) [{item.key}]"


def summary(results: RunResults) -> Group:
    """The table, the metric legend, and the non-finite requests (if any)."""
    parts: list[Any] = [results_table(results), legend(results)]
    bad = nonfinite_lines(results)
    if bad:
        parts.append(Text("\n".join(bad), style="yellow"))
    return Group(*parts)
