"""The result and warning types that the matrix-free spectral estimators share.

``UnconvergedWarning`` (raised by ``matrix_free`` and ``certified`` when an estimate misses
its tolerance within its budget) and ``CountEstimate`` (a count of singular values below a
threshold with its bracket, returned by ``SLQResult.counts`` and ``kpm_counts``).
"""

from __future__ import annotations

import dataclasses

__all__ = ["CountEstimate", "UnconvergedWarning"]


class UnconvergedWarning(RuntimeWarning):
    """A matrix-free estimate did not reach its stated tolerance within its budget."""


@dataclasses.dataclass
class CountEstimate:
    """A count of singular values below ``threshold`` with its certificate.

    ``estimate`` is ``NaN`` unless ``resolved``; ``low``/``high`` always bound the count
    (systematic part rigorous, Hutchinson part ``z_score`` standard errors); ``resolution``
    is the smallest threshold the method's degree could bracket at all; ``stderr`` the
    estimate's standard error over probes and ``stat_width`` the part of the bracket's
    width that is statistical (the rest is the filters' resolution and the deflation's
    inexactness: ``deflation_shift = rho_+``, the upper filter sits at ``sqrt(t^2 + rho_+)``).
    """

    threshold: float
    estimate: float
    low: float
    high: float
    resolved: bool
    resolution: float
    stderr: float = float("nan")
    stat_width: float = float("nan")
    deflation_shift: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
