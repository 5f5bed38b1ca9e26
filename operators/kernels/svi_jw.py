"""SVI jump-wings (Gatheral & Jacquier 2014, "Arbitrage-free SVI volatility surfaces", §3.3):
raw SVI → JW (operators.kernels.analytics.svi_jw, the graph.toml nodes jw_*) and back.

Pure numerics: no I/O, no bytewax, never imports connectors, flows or operators.state.

With w₀ = w(0) = v·t (raw SVI w(k) = a + b(ρ(k − m) + √((k − m)² + σ²))):
  v = w₀/t,  ψ = (b/(2√w₀))(ρ − m/√(m² + σ²)),  p = b(1 − ρ)/√w₀,  c = b(1 + ρ)/√w₀,
  ṽ = (a + bσ√(1 − ρ²))/t.
The inverse (their §3.3): b = √w₀(c + p)/2, ρ = 1 − p√w₀/b, β = ρ − 2ψ√w₀/b (= m/√(m² + σ²)),
α = sign(β)√(1/β² − 1) (= σ/m), m = (v − ṽ)t / (b(−ρ + sign(α)√(1 + α²) − α√(1 − ρ²))), σ = αm,
and for β = 0 (m = 0): σ = (v − ṽ)t / (b(1 − √(1 − ρ²))); a = ṽt − bσ√(1 − ρ²).
"""

from __future__ import annotations

import math

from operators.kernels.analytics import svi_jw

_BETA_ZERO = 1e-12  # |β| below this is m = 0 (α = σ/m is then unbounded)


def jw_to_raw(v: float, psi: float, p: float, c: float, vt: float, t_years: float
              ) -> tuple[float, float, float, float, float]:
    """Raw SVI (a, b, ρ, m, σ) from JW (v, ψ, p, c, ṽ) at maturity t_years. ValueError when the
    JW parameters are not those of a raw SVI with b > 0, |ρ| < 1, σ > 0."""
    t = float(t_years)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"t_years={t_years!r}; pass a positive year fraction (ACT/365)")
    if not (v > 0 and p + c > 0 and vt <= v):
        raise ValueError(f"JW (v={v!r}, p={p!r}, c={c!r}, ṽ={vt!r}): need v > 0, p + c > 0 and ṽ ≤ v")
    w0 = v * t
    s = math.sqrt(w0)
    b = 0.5 * s * (c + p)
    rho = 1.0 - p * s / b
    beta = rho - 2.0 * psi * s / b
    if not (abs(rho) < 1.0 and abs(beta) < 1.0):
        raise ValueError(f"JW gives ρ={rho!r}, β={beta!r}; both must lie in (−1, 1) for a raw SVI")
    root = math.sqrt(1.0 - rho * rho)
    dw = (v - vt) * t
    if abs(beta) < _BETA_ZERO:
        if 1.0 - root < _BETA_ZERO:  # ρ = 0 and m = 0: ṽ = v whatever σ, which JW cannot tell
            raise ValueError(f"JW with ψ = 0, p = c and ṽ = v={v!r} fixes no σ (raw SVI with ρ = m = 0); "
                             "pass the raw params instead")
        m = 0.0
        sigma = dw / (b * (1.0 - root))
    else:
        alpha = math.copysign(math.sqrt(1.0 / (beta * beta) - 1.0), beta)
        m = dw / (b * (-rho + math.copysign(math.sqrt(1.0 + alpha * alpha), alpha) - alpha * root))
        sigma = alpha * m
    a = vt * t - b * sigma * root
    return a, b, rho, m, sigma


def raw_to_jw(params, t_years: float) -> tuple[float, float, float, float, float]:
    """(v, ψ, p, c, ṽ) of raw SVI params at t_years (analytics.svi_jw as a tuple)."""
    d = svi_jw(params, t_years)
    return d["jw_v"], d["jw_psi"], d["jw_p"], d["jw_c"], d["jw_vt"]


__all__ = ["jw_to_raw", "raw_to_jw"]
