"""n-gram simplicity-bias probes for language models (Belrose et al., ICML 2024).

Built once per run: fits unigram..n-gram tables on the training tokens
(``ctx.load_split(ctx.train_split)["tokens"]``, windows ``[n, t]``; no n-gram crosses a
window boundary; or a suffix array over them with ``backend=suffix_array``) and samples one
fixed evaluation set per order with a fixed seed (cached in
``<run_dir>/ngram_probes/sets.npz``). The model sees the first ``t - 1`` tokens of every
window, as in training, so only trained positions are measured. At each checkpoint it
yields, for ``name`` in ``unigram, bigram, trigram`` (orders 1, 2, 3 by default):

* ``{name}/loss``: mean next-token cross-entropy on the ``name`` set (model logits at
  position ``t`` scored on token ``t + 1``), with ``{name}/loss_lo``, ``{name}/loss_hi``:
  a percentile bootstrap CI over sequences;
* ``{name}/loss_t{p}``: the mean cross-entropy at a few positions ``p`` (0, 1, 3, 7, ...,
  and ``t - 2``); every position goes to ``<run_dir>/ngram_probes/step_XXXXXXXX.json``;
* ``{name}/floor``: the Bayes floor of that fixed set (the mean entropy of the
  distributions its tokens were drawn from), and ``entropy/{name}``: the plug-in conditional
  entropy of the training corpus (``H(X_t)``, ``H(X_t|X_{t-1})``, ``H(X_t|X_{t-2},X_{t-1})``);
* ``kl/{name}`` (with ``_lo``, ``_hi``): ``KL(P_n(. | ctx_t) || p_model(. | x_{<=t}))``
  averaged over the positions ``t = 0 .. T - 2`` of the real validation windows (the
  positions training fits; the last token of a window is only ever a target), ``ctx_t``
  the ``n - 1`` tokens ending at ``t`` (back-off where shorter or unseen; see ``dsb.lm.ngram``);
* ``js/{name}`` (with ``_lo``, ``_hi``; option ``js``): the Jensen-Shannon divergence
  between the same two distributions (symmetric, at most ``log 2``);
* ``text/loss`` (with ``_lo``, ``_hi``): cross-entropy on the validation text, and
  ``text/loss_t{p}`` at the positions of ``{name}/loss_t{p}``.

All in nats. The trainer prefixes each name with the entry key (``ngram/bigram/loss``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dsb.evals.base import EvalContext, Snapshot, register_evaluator
from dsb.lm.ngram import (
    NGRAM_NAMES,
    NgramModel,
    bootstrap_ci,
    cached_ngram_sets,
    js_to_ngram,
    kl_to_ngram,
    log_softmax,
)

__all__ = ["NgramProbes", "summary_positions"]


def _next_token_ce(logq_NxPxV: np.ndarray, tokens_NxT: np.ndarray) -> np.ndarray:
    """``[n, t - 1]``: ``-log q_p(tokens[:, p + 1])`` from log-probabilities of the first
    ``t - 1`` positions."""
    target = np.asarray(tokens_NxT)[:, 1:, None].astype(np.int64)
    return -np.take_along_axis(logq_NxPxV, target, axis=-1)[..., 0]


def summary_positions(num_predictions: int) -> list[int]:
    """0, 1, 3, 7, ... below ``num_predictions`` plus the last position."""
    pos = [0] + [2**k - 1 for k in range(1, 32) if 2**k - 1 < num_predictions]
    return sorted(set(pos) | {num_predictions - 1})


@register_evaluator("ngram_probes")
class NgramProbes:
    """n-gram probe sets and KL to n-gram models (see the module docstring).

    Options:
      orders: n-gram orders to probe (1 = unigram, ...).
      num_sequences: sequences per n-gram set.
      seq_len: tokens per sequence; default ``ctx.input_shape[0]`` (the model context).
      val_split: split of real text for the KLs and ``text/loss``; ``None`` skips them.
      max_val_sequences: at most this many validation windows (the first ones).
      batch_size: sequences per ``snapshot.predict`` call (bounds host memory, t * V each).
      seed: sampling seed of the fixed sets (independent of the training seed on purpose,
        so runs with different seeds are probed on the same sets).
      num_bootstrap, confidence: bootstrap CI over sequences.
      cache: keep the sampled sets in ``<run_dir>/ngram_probes/sets.npz``.
      write_positions: write per-position curves to ``<run_dir>/ngram_probes/``.
      js: also the Jensen-Shannon divergences ``js/{name}`` (dense over the vocabulary).
      backend: ``tables`` (``dsb.lm.ngram.NgramModel``: exact sparse tables, no n-gram
        crosses a window; orders up to ``V^n < 2^63``) or ``suffix_array``
        (``dsb.lm.suffix.SuffixNgramModel``, optional package ``tokengrams``: any order on
        large corpora; windows are concatenated; ``entropy/{name}`` is a Monte Carlo
        estimate over ``entropy_positions`` corpus positions).
      smoothing, add_k: ``suffix_array`` only: ``None`` (maximum likelihood with back-off),
        ``add_k`` or ``kneser_ney`` (``dsb.lm.suffix``).
    """

    def __init__(
        self,
        ctx: EvalContext,
        *,
        orders: Sequence[int] = (1, 2, 3),
        num_sequences: int = 256,
        seq_len: int | None = None,
        val_split: str | None = "val",
        max_val_sequences: int = 256,
        batch_size: int = 32,
        seed: int = 0,
        num_bootstrap: int = 1000,
        confidence: float = 0.95,
        cache: bool = True,
        write_positions: bool = True,
        js: bool = True,
        backend: str = "tables",
        smoothing: str | None = None,
        add_k: float = 1.0,
        entropy_positions: int = 4096,
    ):
        self.ctx = ctx
        self.orders = sorted({int(n) for n in orders})
        if not self.orders or self.orders[0] < 1:
            raise ValueError(f"ngram_probes: orders must be positive integers: {orders}")
        self.seq_len = int(seq_len or ctx.input_shape[0])
        if self.seq_len < 2:
            raise ValueError(f"ngram_probes: seq_len must be >= 2, got {self.seq_len}")
        self.batch_size = int(batch_size)
        self.num_bootstrap, self.confidence = int(num_bootstrap), float(confidence)
        self.write_positions = write_positions
        self.js = bool(js)
        self.out_dir = Path(ctx.run_dir) / "ngram_probes"

        train = np.asarray(ctx.load_split(ctx.train_split)["tokens"])
        if ctx.vocab_size is None:
            raise ValueError("ngram_probes: needs text data (data.name=text)")
        if backend == "tables":
            if smoothing is not None:
                raise ValueError("ngram_probes: smoothing needs backend=suffix_array")
            self.model = NgramModel.fit(train, ctx.vocab_size, max_order=self.orders[-1])
        elif backend == "suffix_array":
            from dsb.lm.suffix import SuffixNgramModel

            self.model = SuffixNgramModel(
                train,
                ctx.vocab_size,
                max_order=self.orders[-1],
                smoothing=smoothing,
                add_k=add_k,
                entropy_positions=entropy_positions,
            )
        else:
            raise ValueError(f"ngram_probes: backend={backend!r}: use tables or suffix_array")
        cache_path = self.out_dir / "sets.npz" if cache else None
        self.sets = cached_ngram_sets(
            self.model, self.orders, int(num_sequences), self.seq_len, int(seed), cache_path
        )
        self.val = None
        if val_split is not None:
            self.val = np.asarray(ctx.load_split(val_split)["tokens"])[: int(max_val_sequences)]

    def _logits(self, snapshot: Snapshot, tokens: np.ndarray) -> Iterable[tuple[slice, np.ndarray]]:
        """Log-probabilities ``[b, t - 1, V]`` of each batch of windows ``[b, t]``.

        Training feeds ``tokens[:, :-1]`` (the last token is only a target), so the model
        only ever learned positions ``0 .. t - 2``; the probes feed the same ``t - 1`` tokens
        and never read a position (e.g. an untrained positional-embedding row) it was not
        trained on. The logits at ``p`` predict token ``p + 1``."""
        for i in range(0, len(tokens), self.batch_size):
            sl = slice(i, i + self.batch_size)
            inputs = tokens[sl][:, :-1]
            logits = np.asarray(snapshot.predict(inputs), dtype=np.float32)
            if logits.shape != (*inputs.shape, self.ctx.vocab_size):
                raise ValueError(f"ngram_probes: predict returned shape {logits.shape}")
            yield sl, log_softmax(logits)

    def _ci(self, per_sequence: np.ndarray) -> tuple[float, float]:
        return bootstrap_ci(per_sequence, self.num_bootstrap, self.confidence, seed=0)

    def run(self, snapshot: Snapshot) -> Iterable[tuple[str, float]]:
        curves: dict[str, list[float]] = {}
        for n in self.orders:
            name = NGRAM_NAMES.get(n, f"{n}gram")
            tokens, floor = self.sets[n]
            # each set gets its own forward pass: logits are never shared between sets
            ce = np.concatenate(
                [_next_token_ce(logq, tokens[sl]) for sl, logq in self._logits(snapshot, tokens)]
            )
            per_seq = ce.mean(axis=1)
            lo, hi = self._ci(per_seq)
            yield f"{name}/loss", float(per_seq.mean())
            yield f"{name}/loss_lo", lo
            yield f"{name}/loss_hi", hi
            yield f"{name}/floor", float(floor.mean())
            yield f"entropy/{name}", self.model.entropy(n)
            by_pos = ce.mean(axis=0)
            for p in summary_positions(len(by_pos)):
                yield f"{name}/loss_t{p}", float(by_pos[p])
            curves[f"{name}/loss"] = by_pos.tolist()
            curves[f"{name}/floor"] = floor.mean(axis=0).tolist()

        if self.val is not None and len(self.val):
            kls = {n: [] for n in self.orders}
            text_ce = []
            jss = {n: [] for n in self.orders}
            for sl, logq in self._logits(snapshot, self.val):
                text_ce.append(_next_token_ce(logq, self.val[sl]))
                inputs = self.val[sl][:, :-1]
                for n in self.orders:
                    kls[n].append(kl_to_ngram(self.model, inputs, logq, n, normalized=True))
                    if self.js:
                        jss[n].append(js_to_ngram(self.model, inputs, logq, n, normalized=True))
            text_ce = np.concatenate(text_ce)
            lo, hi = self._ci(text_ce.mean(axis=1))
            yield "text/loss", float(text_ce.mean())
            yield "text/loss_lo", lo
            yield "text/loss_hi", hi
            by_pos = text_ce.mean(axis=0)
            for p in summary_positions(len(by_pos)):
                yield f"text/loss_t{p}", float(by_pos[p])
            curves["text/loss"] = by_pos.tolist()
            for n in self.orders:
                name = NGRAM_NAMES.get(n, f"{n}gram")
                for kind, values in (("kl", kls[n]), ("js", jss[n])):
                    if not values:
                        continue
                    div = np.concatenate(values)
                    lo, hi = self._ci(div.mean(axis=1))
                    yield f"{kind}/{name}", float(div.mean())
                    yield f"{kind}/{name}_lo", lo
                    yield f"{kind}/{name}_hi", hi
                    curves[f"{kind}/{name}"] = div.mean(axis=0).tolist()

        if self.write_positions and self.ctx.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"step_{int(snapshot.step):08d}.json"
            path.write_text(json.dumps({"step": int(snapshot.step), **curves}))
