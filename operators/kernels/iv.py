"""Implied volatility under Black-76 on the forward, undiscounted (coin-margined options).

Pure numerics over numpy arrays (scalars broadcast): no I/O, no bytewax, never imports
connectors or flows. Kernels are numba-compiled with cache=True; call `warm_up()` once at
start-up so the first market data never waits on a compile.

Conventions (docs/architecture.md §6): price in the forward's unit (USD for a USD forward; Deribit coin
premiums convert with price_usd = price_coin × forward, see `implied_vol_coin`), t_years
ACT/365, vol a decimal (0.65 = 65 %).

How it solves (our own scheme): every option is mapped to the out-of-the-money call in
normalised coordinates x = −|ln(F/K)| ≤ 0, β = time value / √(F·K), whose price is
    b(x, s) = e^{x/2} Φ(x/s + s/2) − e^{−x/2} Φ(x/s − s/2),   s = σ√T,   0 < b < e^{x/2}.
The root of b(x, s) = β is found by safeguarded Halley steps (a bracket is kept; a step
that leaves it bisects) on a log objective: ln b − ln β where β ≤ e^{x/2}/2, and
ln(e^{x/2} − b) − ln(e^{x/2} − β) above, the complement computed as a sum of two tails so
it never cancels. Both are concave in s, so the steps are monotone once left of the root.

Speed comes from three things, none of which loosens the stopping rule (a Halley step
≤ 1e-5·s is accepted: the cubic error left is ~1e-15 relative):
  * the price needs no erfc: both tails share e^{−q}, so b and c are written with
    erfcx(y) = e^{y²}erfc(y), our own piecewise polynomial (< 1 ulp), and ln b = −q + ln(…)
    needs no exp at all in the wing (nor any underflow fallback);
  * the initial guess is interpolated (4×4-point cubic) from two tables of s solved once at
    first use, in coordinates where s is smooth: √|x| and √(ln 2 / ln(e^{x/2}/β)) (or of
    the complement). It is within 1e-5 for ~99.5 % of options, so one evaluation suffices;
  * options go through in blocks of 256, in passes (screen; target and table coordinates;
    interpolation; the erfcx pair; log and one Halley step; the full iteration for the few
    left): the straight-line passes compile to SIMD (AVX-512 gathers and FMAs here), and in
    the others the core overlaps the log/exp latencies of many options at once.
Away from the tables (|x| > 3, extreme prices) the guess comes from asymptotic formulas
(lower wing, near the money, upper tail) and 2–4 steps reach the floor
|σ − σ_true| ≤ 1e-12 + 4·ε·P/vega.

Status codes (one int8 per element; NaN vol unless OK):
    OK               solved.
    BELOW_INTRINSIC  price ≤ intrinsic value (no time value: no vol information).
    ABOVE_MAX        price ≥ the upper bound (F for a call, K for a put).
    BAD_INPUT        price, forward, strike or t is NaN/inf, price < 0, forward or strike ≤ 0.
    EXPIRED          t_years ≤ 0.
    LOW_INFORMATION  the time value is within 16 ulps of the price (deep in the money: the
                     price is intrinsic up to rounding) or the normalised time value is
                     subnormal: a number could be computed but it would be rounding noise.

Why one module of ~700 lines: the solver's pieces (the erfcx evaluations, the price in
normalised coordinates, the rational guess tables and the Householder steps) are numba
kernels compiled together and private to the one public job, implied vols with reason codes;
about 100 lines are the guess tables' generated coefficients.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

# Stored with every run (runs.methods, flows/runs.py): bump it whenever a change alters the implied vols
# this module computes, so rows made before and after say which method made them.
METHOD_VERSION = "iv/black76-halley-erfcx/1"

OK = 0
BELOW_INTRINSIC = 1
ABOVE_MAX = 2
BAD_INPUT = 3
EXPIRED = 4
LOW_INFORMATION = 5
STATUS_NAMES = {
    OK: "ok",
    BELOW_INTRINSIC: "below_intrinsic",
    ABOVE_MAX: "above_max",
    BAD_INPUT: "bad_input",
    EXPIRED: "expired",
    LOW_INFORMATION: "low_information",
}

_EPS = 2.220446049250313e-16
_TINY = 2.2250738585072014e-308  # smallest normal double: below it a price has lost bits
_LOW_INFO_ULPS = 16.0
_SQRT_2PI = 2.5066282746310007
_LN_SQRT_2PI = 0.9189385332046728
_INV_SQRT_PI = 0.5641895835477563
_INV_SQRT2 = 0.7071067811865476
_SQRT_PI_2 = math.sqrt(0.5 * math.pi)
_S_BACHELIER = 4e-6  # below this s the lower price is evaluated in its Bachelier limit
_MAX_ITER = 60
_STEP_RTOL = 1e-5  # Halley is cubic: after a step this small the error is ~1e-15 relative or less


# ------------------------------------------------------------------ scalar building blocks


@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c with one rounding (the hardware FMA): gives exact product errors."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


# ------------------------------------------------------------------ the price by erfcx
#
# erfcx(y) = e^{y²} erfc(y) for y ≥ 0: on y < 50 a piecewise polynomial in z = 4/(4 + y)
# (32 equal pieces of z ∈ [4/54, 1], degree 8, fitted by us at Chebyshev nodes in 40-digit
# mpmath, max error < 1 ulp; tests/operators/kernels/test_iv.py checks it), beyond that its asymptotic series.
# z is formed with its rounding error carried (an FMA residual): 4/(4 + y) rounded would
# cost ~4 ulps near y = 0. No exp, no branch on the range but one: the price then needs no
# erfc at all (see _price_eval).

_ERFCX_Y_HI = 50.0
_ERFCX_Z0 = 4.0 / (4.0 + _ERFCX_Y_HI)
_ERFCX_N = 32
_ERFCX_SCALE = _ERFCX_N / (1.0 - _ERFCX_Z0)
# row k: polynomial coefficients c0..c8 in t ∈ [−1, 1], then the piece's z centre and 2/width
_ERFCX_TAB = np.array([
    [0.013697709981230138, 0.002454165694396732, 3.856658007108751e-05, 5.829272655582371e-07, 8.440676605262977e-09, 1.164958210787464e-10, 1.5225180779097954e-12, 1.8679957109239635e-14, 2.1229080383984433e-16, 0.08854166666666666, 69.11999999999999],
    [0.01876510998701153, 0.002615706864097499, 4.227641791357734e-05, 6.553669647388035e-07, 9.702461769511942e-09, 1.3643440741058809e-10, 1.809281137324896e-12, 2.241217753748551e-14, 2.5550190505895903e-16, 0.11747685185185186, 69.11999999999999],
    [0.024171032046596985, 0.0027929986905459677, 4.645284329203441e-05, 7.387465400919859e-07, 1.1181933506277335e-08, 1.6014782512026722e-10, 2.153420970747718e-12, 2.6901035199724758e-14, 3.070789191850464e-16, 0.14641203703703703, 69.12000000000002],
    [0.029948934950186055, 0.002988046081720896, 5.1167036221853804e-05, 8.34968096745089e-07, 1.2920504209354092e-08, 1.8839203238540515e-10, 2.5665137403611473e-12, 3.229085944813789e-14, 3.683470153374277e-16, 0.1753472222222222, 69.11999999999996],
    [0.036136587928387046, 0.0032031628788860398, 5.650264660095877e-05, 9.46297212709275e-07, 1.496788233771469e-08, 2.220746277767852e-10, 3.062307762321733e-12, 3.8747854514974325e-14, 4.407085180114204e-16, 0.2042824074074074, 69.12000000000002],
    [0.04277674144383159, 0.003441026375827147, 6.255818682004773e-05, 1.0754357329391032e-06, 1.7383725351414846e-08, 2.6228278347101924e-10, 3.657036712473183e-12, 4.64609383185546e-14, 5.255896627735e-16, 0.2332175925925926, 69.12000000000002],
    [0.049917917201417604, 0.003704742337247659, 6.944990311794873e-05, 1.2256089546894794e-06, 2.0239590942665243e-08, 3.1031498110036403e-10, 4.369737749454064e-12, 5.5641532134745134e-14, 6.243619892169722e-16, 0.2621527777777778, 69.12000000000002],
    [0.05761534041050352, 0.0039979226138493265, 7.731521949359322e-05, 1.4006697427897626e-06, 2.3621224560529706e-08, 3.677165093384657e-10, 5.222556881361819e-12, 6.65218635579545e-14, 7.382346094210245e-16, 0.29108796296296297, 69.11999999999989],
    [0.06593204192358942, 0.004324777858542302, 8.631686412198094e-05, 1.6052224127269528e-06, 2.763121963180411e-08, 4.363184319431527e-10, 6.241017409214931e-12, 7.935129801808935e-14, 8.681153925276711e-16, 0.32002314814814814, 69.12000000000002],
    [0.07494016334797415, 0.004690228323210474, 9.664780609309982e-05, 1.8447694948583834e-06, 3.239208238040279e-08, 5.182794036413991e-10, 7.454220368066663e-12, 9.43902046170472e-14, 1.0144420253450904e-15, 0.34895833333333337, 69.12000000000002],
    [0.08472250472239948, 0.0051000362650579275, 0.00010853714968072796, 2.125884718141019e-06, 3.8049724920057614e-08, 6.161292975822387e-10, 8.89493920872425e-12, 1.1190090831292747e-13, 1.1769879436066076e-15, 0.3778935185185185, 69.12000000000002],
    [0.09537436202462299, 0.005560964121118573, 0.00012225715385432944, 2.456415693430574e-06, 4.477739754803379e-08, 7.328131200843277e-10, 1.0599565419508932e-11, 1.3213539886781368e-13, 1.3546530505031123e-15, 0.4068287037037037, 69.12000000000002],
    [0.10700571079184064, 0.0060809633223433135, 0.00013813156575728504, 2.8457197957601943e-06, 5.278005324661292e-08, 8.717331460916316e-10, 1.2607858472290632e-11, 1.5531966807129018e-13, 1.5452544524059147e-15, 0.43576388888888884, 69.12000000000002],
    [0.11974380266141757, 0.00666939941516715, 0.00015654547752675716, 3.304936598897328e-06, 6.229911391835906e-08, 1.0367866459179115e-09, 1.4962453567308152e-11, 1.8163483111227422e-13, 1.7453373961715118e-15, 0.46469907407407407, 69.11999999999989],
    [0.13373625383894164, 0.007337320035004847, 0.0001779569349975177, 3.847299859188857e-06, 7.361757886251178e-08, 1.2323960381169402e-09, 1.770808524079364e-11, 2.1119554262849172e-13, 1.9500302674497825e-15, 0.4936342592592593, 69.12000000000002],
    [0.14915471852660273, 0.008097773224092828, 0.00020291054312343053, 4.48849143677683e-06, 8.706538200219e-08, 1.4635278538865393e-09, 2.0890494794960583e-11, 2.44026614829436e-13, 2.1529689650031213e-15, 0.5225694444444444, 69.12000000000016],
    [0.16619925632656093, 0.008966184590799568, 0.00023205332473877777, 5.247038645186985e-06, 1.0302486658606345e-07, 1.735696601437094e-09, 2.4555005024113025e-11, 2.8003914216772905e-13, 2.3463144365486074e-15, 0.5515046296296295, 69.11999999999989],
    [0.18510352066440217, 0.009960802847391448, 0.0002661530947610386, 6.144755311747208e-06, 1.2193620637207147e-07, 2.0549495402807987e-09, 2.874476649389543e-11, 3.190077827883513e-13, 2.5208822490835488e-15, 0.5804398148148149, 69.11999999999989],
    [0.20614091539955617, 0.011103224309248242, 0.00030611960921064546, 7.207225305390439e-06, 1.443025631376261e-07, 2.427828572822271e-09, 3.3498704584501837e-11, 3.6055108745774905e-13, 2.666394883231547e-15, 0.609375, 69.12000000000016],
    [0.229631888979615, 0.012419007954080073, 0.0003530287356236701, 8.464325461194825e-06, 1.7069473472660564e-07, 2.8613059737407907e-09, 3.8849223811539975e-11, 4.041168541871155e-13, 2.7718566585922216e-15, 0.6383101851851851, 69.11999999999989],
    [0.25595255965029423, 0.013938393581037906, 0.0004081498668630836, 9.950782743662804e-06, 2.0175501899069332e-07, 3.3626915207323653e-09, 4.481975319525937e-11, 4.4897438850712533e-13, 2.826038982323856e-15, 0.6672453703703703, 69.12000000000016],
    [0.285544891154861, 0.015697136426772045, 0.00047297676262138906, 1.1706758210579963e-05, 2.3820000015491441e-07, 3.939509746575832e-09, 5.142224094992186e-11, 4.942152540675526e-13, 2.8180514583160118e-15, 0.6961805555555556, 69.11999999999989],
    [0.3189286657438931, 0.01773747223392962, 0.0005492619511595169, 1.3778447958486642e-05, 2.808219582470811e-07, 4.5993474527566334e-09, 5.86547258148299e-11, 5.387636195542721e-13, 2.737963875804222e-15, 0.7251157407407407, 69.11999999999989],
    [0.35671552975407195, 0.020109227170396572, 0.0006390547577712243, 1.621868886246065e-05, 3.3048861154166024e-07, 5.349673229108003e-09, 6.649912361550162e-11, 5.813966836239336e-13, 2.5774366153274378e-15, 0.7540509259259259, 69.12000000000016],
    [0.39962541597519713, 0.02287108710817867, 0.0007447429465500091, 1.9087554694648146e-05, 3.881409278145912e-07, 6.197632407940144e-09, 7.49193694690167e-11, 6.207749469004042e-13, 2.3303135676529258e-15, 0.7829861111111112, 69.11999999999989],
    [0.44850567586928436, 0.026092040535985534, 0.0008690978695091174, 2.2452926251748e-05, 4.547887827990246e-07, 7.1498225260974085e-09, 8.386004766876299e-11, 6.5548136808589e-13, 1.993132712179885e-15, 0.8119212962962963, 69.12000000000016],
    [0.5043532826956004, 0.029853008752689442, 0.0010153229140048904, 2.6391017572228786e-05, 5.315043025696247e-07, 8.212055852248942e-09, 9.324562293359376e-11, 6.840677614578961e-13, 1.565514906835911e-15, 0.8408564814814814, 69.11999999999989],
    [0.5683404929078794, 0.03424867593291308, 0.0011871049285299708, 3.09868392973502e-05, 6.194127984740246e-07, 9.389116746085373e-09, 1.0298035958347323e-10, 7.051062303322028e-13, 1.0504005235356935e-15, 0.8697916666666667, 69.11999999999989],
    [0.6418443769399723, 0.039389530146639276, 0.001388668191715463, 3.6334579822267e-05, 7.196812854417692e-07, 1.0684522457115987e-08, 1.129489813241064e-10, 7.172430360465229e-13, 4.541152372741596e-16, 0.8987268518518519, 69.12000000000016],
    [0.7264806507646249, 0.045404124442242705, 0.0016248303737376225, 4.253788516136361e-05, 8.335046629917232e-07, 1.2100296377421162e-08, 1.230180862782636e-10, 7.19252105803468e-13, -2.1374076842766119e-16, 0.927662037037037, 69.11999999999989],
    [0.8241422554746, 0.05244156467347801, 0.001901059827496136, 4.971001944788267e-05, 9.62089728493853e-07, 1.3636762702208872e-08, 1.330382925705026e-10, 7.100853949523541e-13, -9.405730286491316e-16, 0.9565972222222222, 69.12000000000016],
    [0.9370431427042758, 0.06067422788961281, 0.002223533443229879, 5.797388969704021e-05, 1.106637279529459e-06, 1.5292370926260304e-08, 1.4284705202056894e-10, 6.889175289542176e-13, -1.7112236959702762e-15, 0.9855324074074074, 69.11999999999989],
])


@nb.njit(cache=True, error_model="numpy", inline="always")
def _erfcx_poly(y, s, z):
    """erfcx(y) for 0 ≤ y < 50 given s = fl(4 + y) and z ≈ 4/s to a few ulps."""
    bb = s - 4.0
    e_s = (4.0 - (s - bb)) + (y - bb)  # TwoSum: 4 + y = s + e_s exactly
    z_lo = (_fma(-z, s, 4.0) - z * e_s) * (0.25 * z)  # 4/(4 + y) − z, to second order
    f = (z - _ERFCX_Z0) * _ERFCX_SCALE
    k = min(int(f if f > 0.0 else 0.0), _ERFCX_N - 1)  # a NaN y reads piece 0, never out of bounds
    c = _ERFCX_TAB[k]
    t = (z - c[9]) * c[10] + z_lo * c[10]
    acc = _fma(c[8], t, c[7])
    acc = _fma(acc, t, c[6])
    acc = _fma(acc, t, c[5])
    acc = _fma(acc, t, c[4])
    acc = _fma(acc, t, c[3])
    acc = _fma(acc, t, c[2])
    acc = _fma(acc, t, c[1])
    return _fma(acc, t, c[0])


@nb.njit(cache=True, error_model="numpy", inline="always")
def _erfcx_asym(y):
    """erfcx(y) for y ≥ 50 by its asymptotic series, 6 terms: < 1e-18 relative there."""
    iy = 1.0 / y
    u = iy * iy
    return (_INV_SQRT_PI * iy) * (1.0 - u * (0.5 - u * (0.75 - u * (1.875 - u * (6.5625 - u * 29.53125)))))


@nb.njit(cache=True, error_model="numpy", inline="always")
def _erfcx(y):
    """e^{y²}·erfc(y) for y ≥ 0 (y = +inf gives 0), within ~1 ulp."""
    if y < _ERFCX_Y_HI:
        s = 4.0 + y
        return _erfcx_poly(y, s, 4.0 / s)
    return _erfcx_asym(y)


@nb.njit(cache=True, error_model="numpy", inline="always")
def _erfcx_pair(v1, u2):
    """(erfcx(v1), erfcx(u2)) for 0 ≤ v1 ≤ u2 in straight-line code: both ranges are computed
    and the right one selected, so a loop over options can be vectorised."""
    y1 = v1 if v1 < 49.0 else 49.0
    y2 = u2 if u2 < 49.0 else 49.0
    s1 = 4.0 + y1
    s2 = 4.0 + y2
    r = 4.0 / (s1 * s2)  # one division for both z = 4/(4 + y)
    p1 = _erfcx_poly(y1, s1, s2 * r)
    p2 = _erfcx_poly(y2, s2, s1 * r)
    a1 = _erfcx_asym(v1 if v1 > _ERFCX_Y_HI else _ERFCX_Y_HI)
    a2 = _erfcx_asym(u2 if u2 > _ERFCX_Y_HI else _ERFCX_Y_HI)
    return (p1 if v1 < _ERFCX_Y_HI else a1), (p2 if u2 < _ERFCX_Y_HI else a2)


@nb.njit(cache=True, error_model="numpy", inline="always")
def _price_parts(x, s):
    """The straight-line part of _price_eval: (h, t, q, κ, erfcx(|u1|), erfcx(u2))."""
    inv_s = 1.0 / s  # one division serves h and κ
    h = -x * inv_s
    t = 0.5 * s
    q = 0.5 * (h * h + t * t)
    kappa = h * h * inv_s - 0.25 * s  # b_ss / b_s = x²/s³ − s/4
    e1, e2 = _erfcx_pair(abs(h - t) * _INV_SQRT2, (h + t) * _INV_SQRT2)  # |u1| ≤ u2
    return h, t, q, kappa, e1, e2


@nb.njit(cache=True, error_model="numpy", inline="always")
def _price_finish(s, upper, ex2p, h, t, q, kappa, e1, e2):
    """The branching part of _price_eval (which form, the log): (f, df/ds, κ)."""
    if upper:
        if h <= t:  # u1 ≤ 0
            half = 0.5 * (e1 + e2)
            return math.log(half) - q, -1.0 / (_SQRT_2PI * half), kappa
        g = math.exp(-q)
        c = ex2p - 0.5 * g * (e1 - e2)
        if c > 0.0:
            return math.log(c), -g / (_SQRT_2PI * c), kappa
        return -math.inf, -math.inf, kappa
    if s < _S_BACHELIER:
        # s this small (σ√T < 4e-6) near the money: both forms above lose b to cancellation
        # (it is ~s, their terms ~1). b is odd in s at fixed h = |x|/s, and its e^{−q} factor
        # carries the leading s² term, so b = e^{−q}/√(2π)·s·m(h)·(1 + O(s²)) with
        # m = 1 − h·√(π/2)·erfcx(h/√2) (the Bachelier price over s·φ(h)): relative error
        # ≲ s²/12 < 2e-12 here, against ~1e-16/s for the forms above.
        if h < 50.0:
            m = 1.0 - h * _SQRT_PI_2 * _erfcx(h * _INV_SQRT2)
        else:  # m = h⁻²(1 − 3h⁻² + 15h⁻⁴ − …), where 1 − h·R(h) would cancel
            w = 1.0 / (h * h)
            m = w * (1.0 - w * (3.0 - w * (15.0 - w * (105.0 - w * (945.0 - w * 10395.0)))))
        if m > 0.0:
            return math.log(s * m) - q - _LN_SQRT_2PI, 1.0 / (s * m), kappa
        return -math.inf, math.inf, kappa
    if h >= t:  # u1 ≥ 0
        half = 0.5 * (e1 - e2)
        if half > 0.0:
            return math.log(half) - q, 1.0 / (_SQRT_2PI * half), kappa
        return -math.inf, math.inf, kappa
    g = math.exp(-q)
    b = ex2p - 0.5 * g * (e1 + e2)
    if b > 0.0:
        return math.log(b), g / (_SQRT_2PI * b), kappa
    return -math.inf, math.inf, kappa


@nb.njit(cache=True, error_model="numpy", inline="always")
def _price_eval(x, s, upper, ex2p):
    """(f, df/ds, κ) with f = ln b(x, s) (lower) or ln c, c = e^{x/2} − b (upper), x ≤ 0,
    and κ = b_ss/b_s = c_ss/c_s for the Halley step.

    With u1 = (|x|/s − s/2)/√2, u2 = (|x|/s + s/2)/√2 and e^{x/2}e^{−u1²} = e^{−x/2}e^{−u2²} = e^{−q},
    q = (x²/s² + s²/4)/2, the two erfc terms of b share the factor e^{−q}:
        u1 ≥ 0:  b = ½e^{−q}(erfcx(u1) − erfcx(u2)),       c = e^{x/2} − b
        u1 < 0:  b = e^{x/2} − ½e^{−q}(erfcx(−u1) + erfcx(u2)), c = ½e^{−q}(erfcx(−u1) + erfcx(u2))
    The product form gives ln b = −q + ln(½(…)) with no exp and no underflow however far in the
    wing (no Mills-ratio fallback needed); the argument roundings are harmless here because
    erfcx has relative slope ≤ 2/√π (erfc's is ~2y, which is what made the old form need
    error-free arguments).
    """
    h, t, q, kappa, e1, e2 = _price_parts(x, s)
    return _price_finish(s, upper, ex2p, h, t, q, kappa, e1, e2)


@nb.njit(cache=True, error_model="numpy", inline="always")
def _inv_norm_tail(p):
    """z with Φ(−z) ≈ p for 0 < p ≤ 0.5 (Abramowitz–Stegun 26.2.23, |err| < 4.5e-4)."""
    q = math.sqrt(-2.0 * math.log(p))
    return q - (2.515517 + q * (0.802853 + q * 0.010328)) / (
        1.0 + q * (1.432788 + q * (0.189269 + q * 0.001308)))


@nb.njit(cache=True, error_model="numpy")
def _guess(x, beta, bmax, lnbeta):
    """A starting s for b(x, s) = β, x ≤ 0."""
    ax = -x
    if beta > 0.5 * bmax:
        # upper: c = e^{x/2} − b ≈ Φ(−s/2)(e^{x/2} + e^{−x/2}) when s ≫ |x|/s
        p = (bmax - beta) / (bmax + 1.0 / bmax)
        return 2.0 * _inv_norm_tail(min(p, 0.5))
    # near the money b ≈ s/√(2π) + x/2
    s_atm = _SQRT_2PI * (beta + 0.5 * ax)
    if ax > 0.0 and lnbeta < -1.0:
        # lower wing: ln b ≈ −x²/(2s²) − s²/8 + ln(s³/x²) − ln√(2π), fixed point in s
        a = lnbeta + _LN_SQRT_2PI + 2.0 * math.log(ax)
        s = ax / math.sqrt(-2.0 * lnbeta)
        for _ in range(3):
            den = 3.0 * math.log(s) - 0.125 * s * s - a
            if den <= 0.0:
                break
            s = ax / math.sqrt(2.0 * den)
        if s * s < ax:
            return s
    return s_atm


# ------------------------------------------------------------------ tabulated initial guess
#
# The asymptotic guess above costs ~3 Halley evaluations to reach the floor. A guess good
# to ~1e-5 relative needs only one: Halley's error is cubic, so the
# step that is accepted (|step| ≤ 1e-5·s) leaves ~1e-15 relative. Two tables of s over
# smooth coordinates give that for the bulk, with 4×4-point cubic (Lagrange) interpolation:
#   lower (β ≤ bmax/2):  rows u = √(a/A), a = |x| ≤ A; columns w = √(ln2/L), L = ln(bmax/β)
#                        (s ≈ a/√(2L) in the wing, so s is nearly linear in w; the √a rows
#                        resolve the near-the-money corner where the wing meets the ATM regime)
#   upper (β > bmax/2):  same rows; columns w = √(ln2/Lc), Lc = ln(bmax/c), c = bmax − β; the
#                        table holds s·w (s ≈ √(8·Lc) as β → bmax, so s·w → √(8 ln2))
# Nodes are solved once by the robust path (asymptotic guess + safeguarded Halley) at first
# use. Outside the tables (|x| > A, extreme β) or if a guess is not usable, the asymptotic
# guess takes over; the iteration and its stopping rule are the same either way, so the
# tables change the speed, never the answer's accuracy.

_TAB_A_MAX = 3.0
_TAB_LN2 = 0.6931471805599453
_TAB_LO_L_MAX = 700.0  # ln(bmax/β) beyond this is a subnormal-price corner: asymptotic guess
_TAB_UP_L_MAX = 36.0  # ln(bmax/c) beyond this β is bmax to within rounding: asymptotic guess
_TAB_LO_W_MIN = math.sqrt(_TAB_LN2 / _TAB_LO_L_MAX)
_TAB_UP_W_MIN = math.sqrt(_TAB_LN2 / _TAB_UP_L_MAX)
_TAB_SHAPE = (65, 129)  # rows (√|x|) × columns (w), the same for both tables


_TAB_NODES = _TAB_SHAPE[0] * _TAB_SHAPE[1]


@nb.njit(cache=True, error_model="numpy", inline="always")
def _cubic_weights(t):
    """Lagrange weights of the nodes at −1, 0, 1, 2 for a point t in [0, 1) (extrapolating outside)."""
    tp, tm, tm2 = t + 1.0, t - 1.0, t - 2.0
    return -t * tm * tm2 * (1.0 / 6.0), tp * tm * tm2 * 0.5, -tp * t * tm2 * 0.5, tp * t * tm * (1.0 / 6.0)


@nb.njit(cache=True, error_model="numpy", inline="always")
def _interp_tab(tab_flat, base, u, v):
    """Cubic Lagrange interpolation, 4×4 nodes, at fractional indices (u, v) of the table
    stored flat from base. The stencil is clamped to the table (an edge cell extrapolates
    its cubic); the code is the same for both tables, so a loop over it vectorises."""
    nu, nv = _TAB_SHAPE
    i = min(max(int(u), 1), nu - 3)
    j = min(max(int(v), 1), nv - 3)
    a0, a1, a2, a3 = _cubic_weights(u - i)
    b0, b1, b2, b3 = _cubic_weights(v - j)
    k = base + (i - 1) * nv + (j - 1)
    r0 = b0 * tab_flat[k] + b1 * tab_flat[k + 1] + b2 * tab_flat[k + 2] + b3 * tab_flat[k + 3]
    k += nv
    r1 = b0 * tab_flat[k] + b1 * tab_flat[k + 1] + b2 * tab_flat[k + 2] + b3 * tab_flat[k + 3]
    k += nv
    r2 = b0 * tab_flat[k] + b1 * tab_flat[k + 1] + b2 * tab_flat[k + 2] + b3 * tab_flat[k + 3]
    k += nv
    r3 = b0 * tab_flat[k] + b1 * tab_flat[k + 1] + b2 * tab_flat[k + 2] + b3 * tab_flat[k + 3]
    return a0 * r0 + a1 * r1 + a2 * r2 + a3 * r3


@nb.njit(cache=True, error_model="numpy", inline="always")
def _table_coords(x, upper, target):
    """(u, v, base, post): where to interpolate and the factor to apply (post = 0 where the
    tables do not apply: the guess is then 0 and the asymptotic one is used)."""
    ax = -x
    ell = 0.5 * x - target  # ln(bmax/β) or ln(bmax/c)
    w = math.sqrt(_TAB_LN2 / ell)
    w_min = _TAB_UP_W_MIN if upper else _TAB_LO_W_MIN
    ok = ax <= _TAB_A_MAX and ell >= _TAB_LN2 and ell <= (_TAB_UP_L_MAX if upper else _TAB_LO_L_MAX)
    u = math.sqrt(ax * (1.0 / _TAB_A_MAX)) * (_TAB_SHAPE[0] - 1) if ok else 1.0
    v = (w - w_min) * ((_TAB_SHAPE[1] - 1) / (1.0 - w_min)) if ok else 1.0
    base = _TAB_NODES if upper else 0
    post = (1.0 / w if upper else 1.0) if ok else 0.0  # the upper table holds s·w
    return u, v, base, post


@nb.njit(cache=True, error_model="numpy")
def _table_guess(x, upper, target, tab_flat):
    """s from the tables, or 0.0 where they do not apply (then the asymptotic guess is used).

    The kernel does the same in two passes (_table_coords, then _interp_tab); tests use this."""
    u, v, base, post = _table_coords(x, upper, target)
    return post * _interp_tab(tab_flat, base, u, v)


@nb.njit(cache=True, error_model="numpy")
def _solve_s(x, beta, upper, target, s, ex2p):
    """s = σ√T with b(x, s) = β for x ≤ 0, from the start s (0 → the asymptotic guess).

    target = ln β (lower) or ln(e^{x/2} − β) (upper, β > e^{x/2}/2).
    """
    if not (s > 0.0 and s < math.inf):
        s = _guess(x, beta, ex2p, math.log(beta))
    lo = 0.0
    hi = math.inf
    for _ in range(_MAX_ITER):
        if not (s > lo and s < hi):
            if hi == math.inf:
                s = 2.0 * lo if lo > 0.0 else 1.0
            elif lo == 0.0:
                s = 0.5 * hi
            else:
                s = 0.5 * (lo + hi)
        f, f1, kappa = _price_eval(x, s, upper, ex2p)
        f -= target
        small = (f > 0.0) if upper else (f < 0.0)  # upper: c > c* means b < β, s too small
        if f == 0.0:
            return s
        if small:
            lo = s
        else:
            hi = s
        if not (math.isfinite(f) and math.isfinite(f1)) or f1 == 0.0:
            continue  # out of the representable range: the bracket moves us back
        n = -f / f1
        den = 1.0 + 0.5 * n * (kappa - f1)
        step = n / den if den > 0.5 else n
        s_new = s + step
        if abs(step) <= _STEP_RTOL * s and s_new > lo and s_new < hi:
            return s_new
        if hi < math.inf and hi - lo <= 4.0 * _EPS * hi:
            return 0.5 * (lo + hi)
        s = s_new
    return s


_TO_SOLVE = -1
_BLOCK = 256  # options per pass: the scratch stays in L1, each pass loop stays short


@nb.njit(cache=True, error_model="numpy", inline="always")
def _screen(price, forward, strike, t_years, is_call):
    """(status, x, β, e^{x/2}): a reason code, or _TO_SOLVE with the normalised inputs."""
    if not (math.isfinite(price) and math.isfinite(forward) and math.isfinite(strike)):
        return BAD_INPUT, 0.0, 0.0, 0.0
    if math.isnan(t_years) or t_years == math.inf:
        return BAD_INPUT, 0.0, 0.0, 0.0
    if price < 0.0 or forward <= 0.0 or strike <= 0.0:
        return BAD_INPUT, 0.0, 0.0, 0.0
    if t_years <= 0.0:
        return EXPIRED, 0.0, 0.0, 0.0
    if is_call:
        upper_bound = forward
        intrinsic = forward - strike if forward > strike else 0.0
    else:
        upper_bound = strike
        intrinsic = strike - forward if strike > forward else 0.0
    if price >= upper_bound:
        return ABOVE_MAX, 0.0, 0.0, 0.0
    time_value = price - intrinsic
    if time_value <= 0.0:
        return BELOW_INTRINSIC, 0.0, 0.0, 0.0
    if time_value <= _LOW_INFO_ULPS * _EPS * price:
        return LOW_INFORMATION, 0.0, 0.0, 0.0
    # x = −|ln(F/K)| and e^{x/2} from the one rounded ratio min/max (a sqrt, not an exp)
    big = forward if forward > strike else strike
    ratio = (strike if forward > strike else forward) / big
    x = math.log(ratio)
    ex2p = math.sqrt(ratio)
    beta = time_value / (math.sqrt(forward) * math.sqrt(strike))
    if beta >= ex2p:
        return ABOVE_MAX, 0.0, 0.0, 0.0
    if beta < _TINY:
        return LOW_INFORMATION, 0.0, 0.0, 0.0
    return _TO_SOLVE, x, beta, ex2p


@nb.njit(cache=True, error_model="numpy")
def _iv_kernel(price, forward, strike, t_years, is_call, out_vol, out_status, tab_flat):
    """Solve in blocks of _BLOCK options, in passes: screen, target, guess, price, one Halley
    step, and the full iteration for the few left.

    Each pass is a short loop of independent iterations: the straight-line ones (the table
    interpolation, the erfcx pair) vectorise, and in the others the core overlaps the log/exp
    latencies of many options (one long chain per option would leave it waiting).
    The one-step pass accepts exactly what _solve_s would accept on its first iteration;
    the rest (~0.5 %: outside the tables, or a guess > 1e-5 off) get the full iteration,
    from the stepped guess if that step was small, else from the asymptotic guess (the
    tables are least reliable exactly at the money with σ√T ≪ 1e-3, where they can be far off).
    """
    n = price.shape[0]
    b_idx = np.empty(_BLOCK, dtype=np.int64)
    b_x = np.empty(_BLOCK)
    b_beta = np.empty(_BLOCK)
    b_ex2p = np.empty(_BLOCK)
    b_target = np.empty(_BLOCK)
    b_upper = np.empty(_BLOCK, dtype=np.bool_)
    b_u = np.empty(_BLOCK)
    b_v = np.empty(_BLOCK)
    b_base = np.empty(_BLOCK, dtype=np.int64)
    b_post = np.empty(_BLOCK)
    b_s = np.empty(_BLOCK)
    b_h = np.empty(_BLOCK)
    b_t = np.empty(_BLOCK)
    b_q = np.empty(_BLOCK)
    b_kappa = np.empty(_BLOCK)
    b_e1 = np.empty(_BLOCK)
    b_e2 = np.empty(_BLOCK)
    b_redo = np.empty(_BLOCK, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        m = 0
        for i in range(start, stop):  # pass 1: reason codes, normalised inputs of the rest
            st, x, beta, ex2p = _screen(price[i], forward[i], strike[i], t_years[i], is_call[i])
            out_vol[i] = math.nan
            out_status[i] = st
            b_idx[m] = i
            b_x[m] = x
            b_beta[m] = beta
            b_ex2p[m] = ex2p
            m += st == _TO_SOLVE
        for j in range(m):  # pass 2: the objective's target and where to look in the tables
            beta = b_beta[j]
            ex2p = b_ex2p[j]
            upper = beta > 0.5 * ex2p
            # ln(e^{x/2} − β) is an exact subtraction (Sterbenz) for β ≥ e^{x/2}/2
            target = math.log(ex2p - beta if upper else beta)
            b_upper[j] = upper
            b_target[j] = target
            b_u[j], b_v[j], b_base[j], b_post[j] = _table_coords(b_x[j], upper, target)
        for j in range(m):  # pass 3: the tabulated guess
            b_s[j] = b_post[j] * _interp_tab(tab_flat, b_base[j], b_u[j], b_v[j])
        for j in range(m):  # pass 4: the price's straight-line part at the guess
            s = b_s[j]
            b_h[j], b_t[j], b_q[j], b_kappa[j], b_e1[j], b_e2[j] = _price_parts(
                b_x[j], s if (s > 0.0 and s < math.inf) else 1.0)
        n_redo = 0
        for j in range(m):  # pass 5: one Halley step, accepted on _solve_s's own rule
            s = b_s[j]
            upper = b_upper[j]
            s_new = math.nan
            b_s[j] = 0.0  # where not accepted: where pass 6 starts (0 → the asymptotic guess)
            if s > 0.0 and s < math.inf:
                f, f1, kappa = _price_finish(s, upper, b_ex2p[j], b_h[j], b_t[j], b_q[j], b_kappa[j],
                                             b_e1[j], b_e2[j])
                f -= b_target[j]
                small = (f > 0.0) if upper else (f < 0.0)
                if f == 0.0:
                    s_new = s
                elif math.isfinite(f) and math.isfinite(f1) and f1 != 0.0:
                    nn = -f / f1
                    den = 1.0 + 0.5 * nn * (kappa - f1)
                    step = nn / den if den > 0.5 else nn
                    if abs(step) <= _STEP_RTOL * s and ((step > 0.0) if small else (step < 0.0)):
                        s_new = s + step
                    elif abs(step) <= 1e-2 * s:
                        b_s[j] = s + step  # a near miss: one more step will do
            if s_new == s_new:
                i = b_idx[j]
                vol = s_new / math.sqrt(t_years[i])
                if vol > 0.0 and vol < math.inf:
                    out_vol[i] = vol
                    out_status[i] = OK
                else:
                    out_status[i] = LOW_INFORMATION
            else:
                b_redo[n_redo] = j
                n_redo += 1
        for r in range(n_redo):  # pass 6: the full safeguarded iteration
            j = b_redo[r]
            i = b_idx[j]
            s = _solve_s(b_x[j], b_beta[j], b_upper[j], b_target[j], b_s[j], b_ex2p[j])
            vol = s / math.sqrt(t_years[i])
            if vol > 0.0 and vol < math.inf:
                out_vol[i] = vol
                out_status[i] = OK
            else:
                out_status[i] = LOW_INFORMATION


@nb.njit(cache=True, error_model="numpy")
def _table_node(i, nu, j, nv, w_min):
    """Node (i, j) of a guess table: x on a quadratic grid in [−_TAB_A_MAX, 0], w linear in
    [w_min, 1]; returns (x, e^{x/2}, w, ln of the node's normalised price)."""
    u = i / (nu - 1)
    x = -_TAB_A_MAX * u * u
    w = w_min + (1.0 - w_min) * j / (nv - 1)
    return x, math.exp(0.5 * x), w, 0.5 * x - _TAB_LN2 / (w * w)


@nb.njit(cache=True, error_model="numpy")
def _build_tables(lo_tab, up_tab):
    """Solve every table node by the robust path (asymptotic guess), in normalised space."""
    nu, nv = lo_tab.shape
    for i in range(nu):
        for j in range(nv):
            x, ex2p, w, target = _table_node(i, nu, j, nv, _TAB_LO_W_MIN)
            beta = math.exp(target)
            if i == 0 and beta < 1e-5:
                # at the money b = erf(s/√8) = (s/√(2π))(1 − s²/24 + …): exact to O(s⁴) here,
                # and it spares the iteration its long walk down from the asymptotic guess
                lo_tab[i, j] = _SQRT_2PI * beta * (1.0 + (2.0 * math.pi / 24.0) * beta * beta)
            else:
                lo_tab[i, j] = _solve_s(x, beta, False, target, 0.0, ex2p)
    nu, nv = up_tab.shape  # the upper table holds s·w
    for i in range(nu):
        for j in range(nv):
            # target is ln c, exact: the node is defined by c, not by a rounded β
            x, ex2p, w, target = _table_node(i, nu, j, nv, _TAB_UP_W_MIN)
            up_tab[i, j] = w * _solve_s(x, ex2p - math.exp(target), True, target, 0.0, ex2p)


_TABLES = None


def _tables():
    """The guess tables, lower then upper, flat (2 × 65 × 129 doubles); built on first use
    (~10 ms) and kept for the process."""
    global _TABLES
    if _TABLES is None:
        tab_flat = np.empty(2 * _TAB_NODES)
        lo_tab = tab_flat[:_TAB_NODES].reshape(_TAB_SHAPE)
        up_tab = tab_flat[_TAB_NODES:].reshape(_TAB_SHAPE)
        _build_tables(lo_tab, up_tab)
        if not np.all(np.isfinite(tab_flat) & (tab_flat > 0)):
            raise RuntimeError("operators.kernels.iv: a guess-table node did not solve; this is a bug in iv.py "
                               "(the tables only speed up the solver: report it with numba/numpy versions)")
        _TABLES = tab_flat
    return _TABLES


# ------------------------------------------------------------------ public API


def _as_call_flags(is_call):
    a = np.asarray(is_call)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind in "US":
        low = np.char.lower(a.astype(str))
        ok = np.isin(low, ("c", "call", "p", "put"))
        if not ok.all():
            bad = a[~ok].ravel()[0]
            raise ValueError(f"is_call: option type {bad!r} is not one of 'C', 'call', 'P', 'put'; "
                             "pass booleans (True = call) or those strings")
        return np.isin(low, ("c", "call"))
    return a.astype(bool)


def _prepare(price, forward, strike, t_years, is_call):
    arrs = [np.asarray(price, dtype=np.float64), np.asarray(forward, dtype=np.float64),
            np.asarray(strike, dtype=np.float64), np.asarray(t_years, dtype=np.float64),
            _as_call_flags(is_call)]
    shape = arrs[0].shape
    if all(a.shape == shape for a in arrs) and all(a.flags.c_contiguous for a in arrs):
        return shape, [a.reshape(-1) for a in arrs]  # fast path: no copies
    shape = np.broadcast_shapes(*(a.shape for a in arrs))
    return shape, [np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1) for a in arrs]


def implied_vol_and_status(price, forward, strike, t_years, is_call):
    """Solve once: (vol ndarray float64, status ndarray int8), broadcast shape of the inputs.

    price in the forward's unit (USD for a USD forward), t_years ACT/365, is_call bool (or
    'C'/'P'/'call'/'put'). vol is NaN wherever status != OK.
    """
    shape, (p, f, k, t, c) = _prepare(price, forward, strike, t_years, is_call)
    vol = np.empty(p.shape[0], dtype=np.float64)
    status = np.empty(p.shape[0], dtype=np.int8)
    _iv_kernel(p, f, k, t, c, vol, status, _tables())
    return vol.reshape(shape), status.reshape(shape)


def implied_vol(price, forward, strike, t_years, is_call):
    """Black-76 implied vol (decimal); NaN where the price carries no vol information."""
    return implied_vol_and_status(price, forward, strike, t_years, is_call)[0]


def implied_vol_status(price, forward, strike, t_years, is_call):
    """The int8 reason code per element (OK, BELOW_INTRINSIC, …) — see the module doc."""
    return implied_vol_and_status(price, forward, strike, t_years, is_call)[1]


def implied_vol_coin(price_coin, forward, strike, t_years, is_call):
    """Implied vol from a coin-quoted premium (Deribit): price_usd = price_coin × forward."""
    price_usd = np.asarray(price_coin, dtype=np.float64) * np.asarray(forward, dtype=np.float64)
    return implied_vol(price_usd, forward, strike, t_years, is_call)


# For compiled callers that gather their own inputs (operators/kernels/levels.py solve_marked):
# the block solver over USD prices and the guess tables it reads.
solve_block = _iv_kernel
guess_tables = _tables


def implied_vol_coin_flat(price_coin: np.ndarray, forward: float, strike: np.ndarray, t_years: float,
                          is_call: np.ndarray) -> np.ndarray:
    """implied_vol_coin for the chain's epoch: 1-d prices and strikes of one length, bool call
    flags, one forward and T — no broadcasting or flag parsing (that cost more than the solve)."""
    n = price_coin.shape[0]
    vol = np.empty(n)
    status = np.empty(n, np.int8)
    _iv_kernel(np.ascontiguousarray(price_coin * forward), np.full(n, float(forward)),
               np.ascontiguousarray(strike, np.float64), np.full(n, float(t_years)),
               np.ascontiguousarray(is_call, np.bool_), vol, status, _tables())
    return vol


def implied_vol_coin_and_status(price_coin, forward, strike, t_years, is_call):
    price_usd = np.asarray(price_coin, dtype=np.float64) * np.asarray(forward, dtype=np.float64)
    return implied_vol_and_status(price_usd, forward, strike, t_years, is_call)


def warm_up():
    """Compile (or load from the numba cache) and run every kernel on tiny arrays."""
    p = np.array([5.0, 1.0, 0.0, 99.0, 1e-9, 40.0, 2.0, np.nan])
    f = np.array([100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    k = np.array([100.0, 150.0, 90.0, 60.0, 300.0, 60.0, 100.0, 100.0])
    t = np.array([0.5, 1.0, 0.1, 3.0, 0.01, 0.2, -1.0, 1.0])
    c = np.array([True, True, False, True, True, True, False, True])
    implied_vol_and_status(p, f, k, t, c)
