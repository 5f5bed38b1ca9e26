-- volgraph schema v5: each fit says how it was made (issue #17 part 3).
--
-- smile_fits gains the forward's method (future, parity, underlying or index:
-- operators/kernels/forward.py) and whether the unconstrained SVI fit had butterfly arbitrage
-- and was replaced (operators/kernels/svi.py). Both are also in expiry_views.view's fit, which
-- the dashboard's diagnostics read. Rows written before this migration say '' and false:
-- their provenance was not recorded.

ALTER TABLE smile_fits
    ADD COLUMN IF NOT EXISTS forward_method text NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS repaired boolean NOT NULL DEFAULT false;
