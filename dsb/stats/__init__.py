"""Statistics of image data for DSB probes.

moments     ClassStats, StatsAccumulator, fit_class_stats: streaming float64 class stats
maxent      ICS, box max-ent (Conrad), Gaussian, particle box2 / box3 samplers
truncnormal truncated-normal max-ent set (Gibbs sampler on the class precision)
ot          CQN, bounded mean shift, Gaussian (Bures) OT edits
probesets   MAXENT_SETS, OT_SETS: the registered probe-set kinds (maxent's and ot's)
erasure     LEACE and QLEACE erasers as dataset transforms
report      MomentReport: achieved moment errors of every generated / edited set
evalsets    fixed evaluation sets cached on disk by content hash
plots       plot_probe_curves for metrics.jsonl records, dsb_probe_figures (run figures)

Importing the package imports ``maxent``, ``truncnormal`` and ``ot``, which register the
built-in probe-set kinds, so a lookup in ``probesets`` always sees them (a kind in a new
module is imported here too).
"""

# Importing registers the probe-set kinds.
from dsb.stats import maxent, ot, truncnormal  # noqa: F401
