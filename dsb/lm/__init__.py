"""Language-model side of dsb: text corpora, tokenizers, token windows, n-gram statistics.

Modules: ``corpus`` (where text comes from, incl. the embedded default corpus),
``tokenizers`` (byte-level and BPE), ``data`` (flat token arrays and deterministic windows),
``ngram`` (n-gram counts, entropy floors, sampler, KL), ``markov`` (synthetic Markov-chain
sources with known entropy rate), ``plots`` (n-gram probe figures). The checkpoint
evaluator is ``dsb.evals.ngram_probes``; the model is ``dsb.models.transformer``.
"""
