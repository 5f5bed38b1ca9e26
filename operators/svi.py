"""The public name of volgraph's SVI API, kept stable whatever the package layout:
`operators.svi.fit_svi` and `operators.svi.fit_surface` (and the types and checks that go
with them). The code lives in operators/kernels/svi.py and operators/kernels/surface.py;
this module only re-exports it."""

__all__ = ["MIN_QUOTES", "SliceInputs", "Smile", "SplineSvi", "SviFit", "SviParams", "as_params", "butterfly_g", "fit_surface", "fit_svi",
           "fit_svi_band", "lee_ok", "min_variance", "prepare_slice", "total_variance"]

from operators.kernels.svi import (MIN_QUOTES, SliceInputs, Smile, SplineSvi, SviFit, SviParams,  # noqa: F401
                                   as_params,
                                   butterfly_g, fit_svi, fit_svi_band, lee_ok, min_variance, prepare_slice,
                                   total_variance)
from operators.kernels.surface import fit_surface  # noqa: F401
