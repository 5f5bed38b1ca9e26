"""The dashboard's numeric helpers (dashboard/app.js `niceTicks`, `fmtTick`, `normCdf`,
`deltaX`), run under Node.js and checked by properties and against plain Python references:
axis ticks chosen by the range (even 1-2-5 steps covering the data, labels distinct, never
"-0.00"), the normal CDF against math.erf, and the delta axis rising with the strike.

Needs `node` (/usr/bin/node here; CI installs it): without it these tests FAIL, never skip.
One node process serves every example over a pipe (a line of JSON in, a line out)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tests.helpers.node import node_driver

APP_JS = Path(__file__).resolve().parents[2] / "dashboard" / "app.js"

DRIVER = r"""
const app = require(process.argv[1]);
const rl = require("readline").createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const { fn, args } = JSON.parse(line);
  let out;
  try {
  if (fn === "ticks") {
    const t = app.niceTicks(...args);
    out = { ...t, labels: t.ticks.map((v) => app.fmtTick(v, t.decimals)) };
  } else if (fn === "deltaX") {
    const [f, ks] = args;
    out = ks.map((k) => app.deltaX(f, k));
  } else {
    out = app[fn](...args);
  }
  } catch (err) { out = { error: String(err) }; }  // reported to the test, never a dead pipe
  process.stdout.write(JSON.stringify(out) + "\n");
});
"""


@pytest.fixture(scope="module")
def js():
    for ask in node_driver(DRIVER, str(APP_JS), why="check dashboard/app.js's helpers"):
        yield lambda fn, *args: ask(json.dumps({"fn": fn, "args": args}))


spans = st.floats(1e-6, 1e7)
centres = st.floats(-1e6, 1e6)


@settings(max_examples=300)
@given(lo=centres, span=spans, target=st.integers(3, 8))
def test_ticks_cover_the_range_in_even_distinct_steps(js, lo, span, target):
    hi = lo + span
    assume(span > 1e-9 * max(1.0, abs(lo)))  # below that the range is a single value (next test)
    t = js("ticks", lo, hi, target)
    step, ticks, labels = t["step"], t["ticks"], t["labels"]
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-12)
    assert any(math.isclose(mantissa, m, rel_tol=1e-9) for m in (1, 2, 5, 10)), step
    # covers the data (float noise, a billionth of a step or a few ulps, is snapped to the tick)
    noise = 1e-9 * step + 4 * max(math.ulp(lo), math.ulp(hi))
    assert t["lo"] <= lo + noise and t["hi"] >= hi - noise
    assert 2 <= len(ticks) <= 4 * target + 2
    for a, b in zip(ticks, ticks[1:]):
        assert math.isclose(b - a, step, rel_tol=1e-6, abs_tol=1e-12)
    assert len(set(labels)) == len(labels), labels  # distinct labels: decimals follow the step
    assert not any(lab.startswith("-") and float(lab) == 0 for lab in labels), labels  # never "-0.00"
    for v, lab in zip(ticks, labels):
        assert math.isclose(float(lab), v, rel_tol=1e-9, abs_tol=step * 1e-6)


@given(x=centres)
def test_a_single_value_gets_a_range_around_it(js, x):
    t = js("ticks", x, x, 5)
    assert t["lo"] < x < t["hi"] and len(set(t["labels"])) == len(t["labels"]) >= 3


def test_the_short_expiry_of_the_issue_gets_readable_labels(js):
    """The k range of a 40-minute expiry, labelled -0.01, -0.00, -0.00, 0.00, 0.01 before (issue #14)."""
    assert js("ticks", -0.0097, 0.0097, 5)["labels"] == ["-0.010", "-0.005", "0.000", "0.005", "0.010"]
    assert js("ticks", 0, 183.5, 5)["labels"] == ["0", "50", "100", "150", "200"]  # term axis: from 0 days


@given(x=st.floats(-8, 8))
def test_norm_cdf_matches_erf(js, x):
    assert abs(js("normCdf", x) - 0.5 * (1 + math.erf(x / math.sqrt(2)))) < 2e-7


@settings(max_examples=200)
@given(vol=st.floats(0.1, 2.0), t_years=st.floats(1e-4, 2.0), rho=st.floats(-0.9, 0.9), s=st.floats(0.02, 0.5))
def test_delta_axis_rises_with_the_strike_from_0_to_1(js, vol, t_years, rho, s):
    """x = 1 − call delta on the fitted vol: within [0, 1] and rising with k, for smiles whose
    wings are gentle (slope of w ≤ vol²T) over ±3 standard deviations of vol·√T ≤ 0.5; and equal
    to a plain-Python 1 − N(d1)."""
    assume(vol * math.sqrt(t_years) <= 0.5)
    b = 0.5 * vol * vol * t_years  # gentle wings: Lee's bound and g(k) ≥ 0 hold for these
    a = vol * vol * t_years - b * s
    f = {"a": a, "b": b, "rho": rho, "m": 0.0, "sigma": s, "t_years": t_years}
    half = 3 * vol * math.sqrt(t_years)
    ks = [-half + 2 * half * i / 40 for i in range(41)]
    xs = js("deltaX", f, ks)
    assert all(x is not None and 0 <= x <= 1 for x in xs)
    assert all(b2 >= a2 - 1e-12 for a2, b2 in zip(xs, xs[1:])), xs
    # reference: 1 − N(d1) with d1 = (−k + w/2)/√w, in plain Python
    for k, x in zip(ks[::8], xs[::8]):
        w = a + b * (rho * k + math.sqrt(k * k + s * s))
        d1 = (-k + w / 2) / math.sqrt(w)
        assert abs(x - 0.5 * (1 - math.erf(d1 / math.sqrt(2)))) < 2e-7
