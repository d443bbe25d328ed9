"""The training Jacobian ``J = d theta_T / d theta_0`` of a whole training run.

Modules, each importing only those above it in this list:

* ``training``: the run as a pure function (nested ``lax.scan`` over fixed minibatches), and
  the reference run.
* ``dense``: forward/reverse-mode dense J in memory-bounded chunks, robust float64 SVD.
* ``estimates``: the result and warning types the matrix-free estimators share
  (``CountEstimate``, ``UnconvergedWarning``).
* ``krylov``: Krylov kernels on any linear map: Golub-Kahan bidiagonalisation, Lanczos,
  the work-dtype rule.
* ``operator``: ``JacobianOperator`` (J v / J^T u from one linearisation) and the explicit
  products certificates use (triplet residuals, Gram rows).
* ``certified``: top-k triplets with residuals, kernel-polynomial bulk counts with brackets.
* ``matrix_free``: randomized SVD, Golub-Kahan SVD, SLQ on ``D = J - I``.
* ``directions``: analyses of J's singular directions: regions, bulk, alignment,
  projections, overlaps, KL probes, restricted training.
* ``study`` (not imported here): the Belrose & Scherlis (2024, arXiv 2412.07003) study on
  digits behind ``experiments/training_jacobian``: its runs, cached spectra, numbers and
  figures.
"""

from dsb.jacobian.certified import (
    KPMCounts,
    TopSingular,
    kpm_counts,
    top_singular_triplets,
)
from dsb.jacobian.dense import (
    SVDResult,
    auto_chunk_size,
    identity_columns,
    jacobian_forward,
    jacobian_forward_cached,
    jacobian_forward_to_disk,
    jacobian_reverse,
    load_spectrum,
    robust_svd,
    save_spectrum,
)
from dsb.jacobian.directions import (
    alignment,
    bulk_counts,
    closest_to_one,
    max_kl,
    max_kl_directions,
    ood_inputs,
    perturbation_sweep,
    random_subspace_overlap,
    restricted_training,
    spectrum_regions,
    subspace_overlap,
    update_projection,
)
from dsb.jacobian.estimates import CountEstimate, UnconvergedWarning
from dsb.jacobian.krylov import LanczosResult, golub_kahan, lanczos
from dsb.jacobian.matrix_free import (
    SLQResult,
    golub_kahan_svd,
    randomized_svd,
    slq_spectrum,
)
from dsb.jacobian.operator import JacobianOperator
from dsb.jacobian.training import (
    TrainingRun,
    check_full_precision,
    cross_entropy_loss,
    fixed_minibatches,
    linen_fold_in,
    make_training_run,
    nnx_apply,
    notebook_mlp_init,
    reference_optimizer,
    reference_run,
    softmax_cross_entropy,
)

__all__ = [
    "CountEstimate",
    "JacobianOperator",
    "KPMCounts",
    "LanczosResult",
    "SLQResult",
    "SVDResult",
    "TopSingular",
    "TrainingRun",
    "UnconvergedWarning",
    "alignment",
    "auto_chunk_size",
    "bulk_counts",
    "check_full_precision",
    "closest_to_one",
    "cross_entropy_loss",
    "fixed_minibatches",
    "golub_kahan",
    "golub_kahan_svd",
    "identity_columns",
    "jacobian_forward",
    "jacobian_forward_cached",
    "jacobian_forward_to_disk",
    "jacobian_reverse",
    "kpm_counts",
    "lanczos",
    "linen_fold_in",
    "load_spectrum",
    "make_training_run",
    "max_kl",
    "max_kl_directions",
    "nnx_apply",
    "notebook_mlp_init",
    "ood_inputs",
    "perturbation_sweep",
    "random_subspace_overlap",
    "randomized_svd",
    "reference_optimizer",
    "reference_run",
    "restricted_training",
    "robust_svd",
    "save_spectrum",
    "slq_spectrum",
    "softmax_cross_entropy",
    "spectrum_regions",
    "subspace_overlap",
    "top_singular_triplets",
    "update_projection",
]
