"""Statistics of image data for DSB probes (import the submodules directly).

moments   ClassStats, StatsAccumulator, fit_class_stats: streaming float64 class stats
maxent    ICS, box max-ent (Conrad), Gaussian, particle box2 / box3 samplers
ot        CQN, bounded mean shift, Gaussian (Bures) OT edits
erasure   LEACE and QLEACE erasers as dataset transforms
report    MomentReport: achieved moment errors of every generated / edited set
evalsets  fixed evaluation sets cached on disk by content hash
plots     plot_probe_curves for metrics.jsonl records, dsb_probe_figures (run figures)
"""
