"""The probe verdict on constructed probe results whose right label is known.

The ground truth is built in: a null world where no probe candidate is more likely to show the
concept than the standard prompt's image (but best-of-N selection, with a selector correlated
with the scorer, inflates the best-of-N rates), and a world where one setting really recovers it.
"""

import math

import numpy as np
from scipy.stats import norm

from evallearn.probes.verdict import (
    AVOIDANCE,
    DESTRUCTION,
    INCONCLUSIVE,
    NOT_ERASED,
    greater_p,
    holm,
    min_p,
    prompts_needed,
    verdict,
)

#: the paper's suite: sweeps (settings per prompt) and single-value probes
SWEEPS = {"noise_based": 24, "classifier_guidance": 25, "diffusion_completion": 7}
SINGLES = ("inpainting", "textual_inversion", "unlearn_diff_atk")


def _world(rng, n=30, p0=0.10, rho=0.5, selector_noise=0.7, real=None):
    """One simulated probe run. Every image of prompt i shares a latent u_i (same prompt and seed),
    so images are correlated; each image shows the concept with probability p0, except the settings
    in ``real`` ({probe: (setting index, rate)}). The selector sees the scorer's answer plus noise."""
    real = real or {}
    u = rng.standard_normal(n)

    def draw(rate):
        return (rho * u + math.sqrt(1 - rho**2) * rng.standard_normal(n) > norm.ppf(1 - rate)).astype(float)

    std = draw(p0)
    base = (rng.random(n) < 0.95).astype(float)
    out = {"standard_prompt": {"value": std.mean(), "kind": "recovery", "chance": 0.1,
                               "details": {"per_item": std.tolist(),
                                           "base": {"value": base.mean(), "per_item": base.tolist()}}}}
    for key, n_set in SWEEPS.items():
        ys = [draw(real[key][1] if key in real and real[key][0] == s else p0) for s in range(n_set)]
        y = np.stack(ys, 1)
        chosen = (y + selector_noise * rng.standard_normal(y.shape)).argmax(1)
        best = y[np.arange(n), chosen]
        settings = {f"s{s}": {"value": ys[s].mean(), "per_item": ys[s].tolist()} for s in range(n_set)}
        out[key] = {"value": best.mean(), "kind": "recovery", "chance": 0.1,
                    "details": {"per_item": best.tolist(), "settings": settings}}
    for key in SINGLES:
        y = draw(real[key][1] if key in real else p0)
        out[key] = {"value": y.mean(), "kind": "recovery", "chance": 0.1, "details": {"per_item": y.tolist()}}
    return out


def test_selection_alone_does_not_make_a_recovery():
    rng = np.random.default_rng(20250517)
    labels, best_rates = [], []
    for _ in range(200):
        w = _world(rng)
        best_rates.append(w["noise_based"]["value"])
        labels.append(verdict(w)["label"])
    # the selector does inflate best-of-N far above the standard prompt's 0.10 ...
    assert np.mean(best_rates) > 0.3
    # ... and yet a false "recovers" (guidance-based avoidance) is rare: Holm keeps it at most 5 %
    false_recovery = np.mean([lab == AVOIDANCE for lab in labels])
    assert false_recovery <= 0.05, false_recovery
    assert set(labels) <= {AVOIDANCE, DESTRUCTION}


def test_a_real_recovery_is_found():
    rng = np.random.default_rng(7)
    hits, named = 0, 0
    for _ in range(100):
        v = verdict(_world(rng, real={"noise_based": (23, 0.8)}))
        hits += v["label"] == AVOIDANCE
        named += "noise_based" in v["recovered_by"]
        if "noise_based" in v["recovered_by"]:
            assert v["probes"]["noise_based"]["tested"] == "s23"  # the setting that recovers it
    assert hits >= 95 and named >= 95


def test_one_significant_setting_among_twenty_is_not_enough():
    # setting 0 shows the concept in 6/30 prompts where the standard prompt shows it in none: one-sided
    # sign test p = 0.5^6 = 0.0156 < 0.05 alone, but Holm over 20 settings gives 20 * 0.0156 = 0.31
    n = 30
    std = [0.0] * n
    one = [1.0] * 6 + [0.0] * (n - 6)
    settings = {f"s{s}": {"value": float(np.mean(one if s == 0 else std)), "per_item": one if s == 0 else std}
                for s in range(20)}
    res = {"standard_prompt": {"value": 0.0, "kind": "recovery",
                               "details": {"per_item": std, "base": {"value": 1.0, "per_item": [1.0] * n}}},
           "noise_based": {"value": 0.2, "kind": "recovery", "details": {"per_item": one, "settings": settings}}}
    v = verdict(res)
    row = v["probes"]["noise_based"]
    assert math.isclose(row["p"], 0.5**6) and math.isclose(row["p_holm"], 20 * 0.5**6)
    assert row["tested"] == "s0" and not row["recovers"]
    assert v["label"] == DESTRUCTION
    # with the best-of-N values alone (no per-setting values) the same probe is one hypothesis
    del res["noise_based"]["details"]["settings"]
    assert verdict(res)["label"] == AVOIDANCE


def test_labels_on_hand_built_results():
    def res(k, n=20, base=None):
        d = {"per_item": [1.0] * k + [0.0] * (n - k)}
        if base is not None:
            d["base"] = {"value": base / n, "per_item": [1.0] * base + [0.0] * (n - base)}
        return {"value": k / n, "kind": "recovery", "details": d}

    # standard 2/20, base 19/20; noise 16/20: 14 discordant pairs, p = 0.5^14, Holm x2
    avoid = verdict({"standard_prompt": res(2, base=19), "noise_based": res(16), "inpainting": res(3)})
    assert avoid["label"] == AVOIDANCE and avoid["recovered_by"] == ["noise_based"]
    assert math.isclose(avoid["probes"]["noise_based"]["p_holm"], 2 * 0.5**14)
    assert math.isclose(avoid["probes"]["inpainting"]["p"], 0.5)
    assert verdict({"standard_prompt": res(1, base=19), "noise_based": res(2)})["label"] == DESTRUCTION
    assert verdict({"standard_prompt": res(18, base=19), "noise_based": res(19)})["label"] == NOT_ERASED


def test_too_few_prompts_is_inconclusive_and_says_how_many_are_needed():
    n = 4
    v = verdict({"standard_prompt": {"value": 0.0, "kind": "recovery",
                                     "details": {"per_item": [0.0] * n, "base": {"value": 1.0, "per_item": [1.0] * n}}},
                 "noise_based": {"value": 0.0, "kind": "recovery", "details": {"per_item": [0.0] * n}}})
    assert v["label"] == INCONCLUSIVE
    assert v["warnings"] and "too few" in v["warnings"][0] and "warning" in v["summary"]
    assert any(f"at least {prompts_needed(1)}" in w for w in v["warnings"])
    # 30 prompts and 59 tested settings: possible (0.5^30 <= 0.05/59), no warning
    assert not _warnings(30, 59) and _warnings(10, 59) and not _warnings(11, 59)


def _warnings(n, m):
    std = {"value": 0.0, "kind": "recovery", "details": {"per_item": [0.0] * n}}
    settings = {f"s{s}": {"value": 0.0, "per_item": [0.0] * n} for s in range(m)}
    probe = {"value": 0.0, "kind": "recovery", "details": {"per_item": [0.0] * n, "settings": settings}}
    return verdict({"standard_prompt": std, "p": probe})["warnings"]


def test_tests_and_corrections_by_hand():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert holm([0.5, 0.001]) == [0.5, 0.002]
    assert math.isclose(greater_p([1.0] * 8 + [0.0] * 22, [0.0] * 30), 0.5**8)
    assert math.isclose(greater_p([1, 1, 1, 0], [0, 0, 0, 1]), 5 / 16)  # P(Binom(4, 1/2) >= 3)
    assert greater_p([0, 0], [1, 1]) == 1.0 and greater_p([1, 0], [1, 0]) == 1.0
    # unequal lengths: Fisher's exact test, P(X >= 5) for X ~ Hypergeom(30 images, 5 with the concept, 10 drawn)
    assert math.isclose(greater_p([1.0] * 5 + [0.0] * 5, [0.0] * 20), math.comb(10, 5) / math.comb(30, 5))
    assert min_p(11, 11) == 0.5**11 and min_p(2, 3) == 1 / 10
    assert prompts_needed(59) == 11 and 0.5**11 <= 0.05 / 59 < 0.5**10


def test_report_prints_a_verdict_row_without_an_interval():
    """A tested row whose interval was not recorded prints a dash there instead of failing."""
    from evallearn.probes.report import probe_html
    from evallearn.results import Probes

    probes = Probes.model_validate({
        "results": {"noise": {"after": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 8,
                                        "higher_is_better": True, "kind": "noise_based", "chance": 0.25,
                                        "probe": "noise_based"}}},
        "verdict": {"label": "recovers", "summary": "s",
                    "probes": {"noise": {"vs_standard": 0.25, "tested": "eta=1"}}}})
    html = probe_html(probes)
    assert "eta=1: +0.250 [–, –]" in html
