"""Language-model side of dsb: n-gram statistics of text and the n-gram probe figures.

Modules: ``ngram`` (n-gram counts, entropy floors, sampler, KL) and ``plots`` (n-gram probe
figures). The text data itself (corpora, tokenizers, token windows) is ``dsb.data.text``;
the checkpoint evaluator is ``dsb.evals.ngram_probes``; the model is
``dsb.models.transformer``.
"""
