"""The dashboard's numeric helpers for the smile's delta axis (dashboard/app.js `normCdf`,
`deltaX`, `deltaTicks`), run under Node.js and checked by properties and against plain Python
references: the normal CDF against math.erf, the delta axis rising with the strike, and its
ticks (50Δ first, never closer than 32 px). (The charts' other
axis ticks are Plotly's own; tests/dashboard/test_dashboard_view.py checks them as drawn.)

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
  if (fn === "deltaX" || fn === "sviVol") {
    const [f, ks] = args;
    out = ks.map((k) => app[fn](f, k));
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


@settings(max_examples=200)
@given(lo=st.floats(0, 1), span=st.floats(1e-3, 1), px=st.floats(100, 2000))
def test_delta_ticks_keep_50_delta_and_32_px_apart(js, lo, span, px):
    hi = min(1.0, lo + span)
    assume(hi > lo)
    ticks = js("deltaTicks", lo, hi, px)
    assert ticks == sorted(set(ticks)) and all(lo <= d <= hi for d in ticks), ticks
    assert set(ticks) <= {0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95}
    assert all((b - a) / (hi - lo) * px >= 32 - 1e-9 for a, b in zip(ticks, ticks[1:])), ticks
    if lo <= 0.5 <= hi:
        assert 0.5 in ticks
    labels = [js("fmtDelta", d) for d in ticks]
    assert len(set(labels)) == len(labels)


@settings(max_examples=100, deadline=None)
@given(lo=st.floats(-0.8, 0.2), width=st.floats(0.05, 1.5), coefs=st.lists(st.floats(-2e-3, 2e-3), min_size=1,
                                                                            max_size=16), t_years=st.floats(0.01, 2.0))
def test_the_smile_curve_carries_the_fits_spline(js, lo, width, coefs, t_years):
    """sviVol of a fit with a spline (SmileFit's spline_lo_k / spline_hi_k / spline_w) is the
    Python kernels' √(w/T) (operators/kernels/svi.py total_variance), inside the spline's range,
    at its ends and beyond them."""
    from operators.kernels import svi
    p = svi.as_params((0.04 * t_years, 0.1, -0.3, 0.0, 0.2, lo, lo + width, tuple(coefs)))
    f = {"a": p.a, "b": p.b, "rho": p.rho, "m": p.m, "sigma": p.sigma, "t_years": t_years,
         "spline_lo_k": p.spline_lo_k, "spline_hi_k": p.spline_hi_k, "spline_w": list(p.spline_w)}
    ks = [lo - 0.3 + (width + 0.6) * i / 60 for i in range(61)] + [lo, lo + width]
    w = svi.total_variance(p, ks)
    got = js("sviVol", f, ks)
    for wi, g in zip(w, got):
        assert (g is None) if wi <= 0 else abs(g - math.sqrt(wi / t_years)) < 1e-12, (wi, g)
