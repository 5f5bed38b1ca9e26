"""The public name of volgraph's SVI API, kept stable whatever the package layout:
`operators.svi.fit_svi` (and the types and checks that go with it). The code lives in
operators/kernels/svi.py; this module only re-exports it."""

__all__ = ["MIN_QUOTES", "SliceInputs", "SviFit", "SviParams", "as_params", "butterfly_g", "fit_svi", "lee_ok",
           "min_variance", "prepare_slice", "total_variance"]

from operators.kernels.svi import (MIN_QUOTES, SliceInputs, SviFit, SviParams, as_params,  # noqa: F401
                                   butterfly_g, fit_svi, lee_ok, min_variance, prepare_slice,
                                   total_variance)
