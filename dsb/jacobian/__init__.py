"""The training Jacobian ``J = d theta_T / d theta_0`` of a whole training run.

* ``training``: the run as a pure function (nested ``lax.scan`` over fixed minibatches).
* ``dense``: forward/reverse-mode dense J in memory-bounded chunks, robust float64 SVD.
* ``matrix_free``: J v / J^T u, randomized SVD, Golub-Kahan, SLQ on ``D = J - I``.
* ``certified``: top-k triplets with residuals, kernel-polynomial bulk counts with brackets.
* ``analysis``: regions, bulk, alignment, projections, overlaps, KL probes, restricted
  training.
"""

from dsb.jacobian.analysis import (
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
from dsb.jacobian.certified import (
    CountEstimate,
    KPMCounts,
    TopSingular,
    UnconvergedWarning,
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
from dsb.jacobian.matrix_free import (
    JacobianOperator,
    SLQResult,
    golub_kahan_svd,
    randomized_svd,
    slq_spectrum,
)
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
    "golub_kahan_svd",
    "identity_columns",
    "jacobian_forward",
    "jacobian_forward_cached",
    "jacobian_forward_to_disk",
    "jacobian_reverse",
    "kpm_counts",
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
