"""Prequential MDL of (erased) training data: ``dsb.mdl.core`` (the measure, built on the
trainer), ``dsb.mdl.aggregate`` (table and figure over seeds), ``python -m dsb.mdl``
(the Hydra entry)."""

from dsb.mdl.core import MdlResult, chunk_bounds, mdl_from_chunks, run_mdl, uniform_code_bits

__all__ = ["MdlResult", "chunk_bounds", "mdl_from_chunks", "run_mdl", "uniform_code_bits"]
