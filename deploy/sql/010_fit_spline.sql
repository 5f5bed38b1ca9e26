-- volgraph schema v10: a fit's spline (issue #17).
--
-- A slice that raw SVI leaves under 98.5 % of its quotes in band carries a smooth local
-- correction on its quoted range (operators/kernels/svi.py, the spline rescue):
--   w(k) = a + b(rho(k − m) + √((k − m)² + sigma²)) + Σ_j spline_w[j]·B_j(k),
-- B_j the uniform cubic B-splines on [spline_lo_k, spline_hi_k] cut into
-- cardinality(spline_w) + 3 equal intervals, B_j supported on the j-th to (j+4)-th cut, zero
-- (with slope and curvature) at and beyond both ends (operators/kernels/bspline.py states the
-- formula). k = ln(K/F) on the fit's forward; w total variance. spline_w = '{}': raw SVI alone,
-- which is what every row written before this migration was.

ALTER TABLE smile_fits
    ADD COLUMN IF NOT EXISTS spline_lo_k double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS spline_hi_k double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS spline_w double precision[] NOT NULL DEFAULT '{}';
