"""Counting n-grams at corpus scale: the packed sparse tables of ``dsb.lm.ngram`` against
the suffix array of ``dsb.lm.suffix`` (optional package ``tokengrams``), time and memory.

Corpus (``--corpus``, synthetic: no 10^7-token text installs here):

  markov     (default) ``x_t = x_{t-1} + r_t mod V``, ``r_t`` iid Zipf(1.1) over
             ``--vocab`` = 4096 tokens (a BPE-sized vocabulary): a first-order chain with
             Zipf rows whose distinct n-grams keep growing with the corpus. Packed int64
             keys hold orders up to 5 at V = 4096 (4096^5 = 2^60).
  repeated   the embedded corpus (byte-level, V = 256, 466 k tokens) repeated to
             ``--tokens``. Do not use it for the suffix array: tokengrams' index build
             degenerates on long exact repeats (measured: 0.2 CPU-s for the 420 k-token
             training text, 43 CPU-s for the same text twice), which also matters for real
             corpora with duplicated documents (deduplicate first).

Each case runs in a fresh subprocess (its own peak RSS, ``VmHWM``); recorded per case:
``build_s`` (tables: ``NgramModel.fit`` of orders 1..n; suffix: the index),
``query_s`` (the ``[N, V]`` conditionals of 1000 corpus contexts at the top order, with
back-off), ``sample_s`` (256 sequences of 128 tokens at the top order), ``peak_rss_gib``
(the subprocess's high-water mark) and ``rss_before_gib`` (after the imports and the
corpus itself, before counting), ``user_s`` / ``sys_s`` CPU time and the load average.
The machine may be shared: compare the CPU times, and read wall times with the load.

    python benchmarks/ngram_counting.py [--tokens 10000000] [--corpus repeated]
        [--table-orders 3 5 6] [--suffix-orders 8 16] [--out benchmarks/results/ngram_counting.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _corpus(kind: str, tokens: int, vocab: int) -> tuple[np.ndarray, int]:
    if kind == "repeated":
        from dsb.config import TextConfig
        from dsb.data.text import prepare

        c = prepare(TextConfig())
        base = np.concatenate([c.tokens("train"), c.tokens("val")]).astype(np.int64)
        return np.resize(base, tokens), 256
    if kind == "markov":
        # x_t = x_{t-1} + r_t mod V with r_t iid Zipf(1.1): a first-order chain whose rows
        # are shifted Zipf profiles; the distinct n-grams keep growing with the corpus
        rng = np.random.default_rng(0)
        zipf = 1.0 / np.arange(1, vocab + 1) ** 1.1
        ranks = np.minimum(
            np.searchsorted(np.cumsum(zipf / zipf.sum()), rng.random(tokens)), vocab - 1
        )
        return np.cumsum(ranks) % vocab, vocab
    raise ValueError(f"--corpus {kind!r}: markov or repeated")


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_case(args) -> dict:
    corpus, vocab = _corpus(args.corpus, args.tokens, args.vocab)
    rng = np.random.default_rng(1)
    order = args.order
    starts = rng.integers(0, len(corpus) - order, size=1000)
    ctx = corpus[starts[:, None] + np.arange(order - 1)[None, :]]
    rss_before = _rss("VmRSS")
    t0 = time.perf_counter()
    if args.backend == "tables":
        from dsb.lm.ngram import NgramModel

        model = NgramModel.fit(corpus, vocab, max_order=order)
        size = {
            "distinct_contexts_top": len(model.tables[order].context_keys),
            "distinct_ngrams_top": int(model.tables[order].counts.nnz),
            "stored_bytes": int(
                sum(
                    t.context_keys.nbytes
                    + t.counts.data.nbytes
                    + t.counts.indices.nbytes
                    + t.counts.indptr.nbytes
                    for t in model.tables.values()
                )
            ),
        }
    else:
        from dsb.lm.suffix import SuffixNgramModel

        model = SuffixNgramModel(corpus, vocab, max_order=order)
        size = {}
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = model.conditional(ctx, order)
    query = time.perf_counter() - t0
    assert np.allclose(p.sum(axis=1), 1.0)
    t0 = time.perf_counter()
    _, floor = model.sample(256, 128, order, seed=0)
    sample = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "backend": args.backend,
        "order": order,
        "tokens": len(corpus),
        "vocab": int(vocab),
        "build_s": round(build, 3),
        "query_s": round(query, 3),
        "sample_s": round(sample, 3),
        "sampled_floor_mean": round(float(floor.mean()), 4),
        "rss_before_gib": round(rss_before / 2**30, 3),
        "peak_rss_gib": round(_rss("VmHWM") / 2**30, 3),
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
        **size,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--corpus", default="markov")
    ap.add_argument("--case-timeout", type=float, default=1200, help="seconds per case")
    ap.add_argument("--vocab", type=int, default=4096, help="markov corpus only")
    ap.add_argument("--table-orders", type=int, nargs="*", default=[3, 5, 6])
    ap.add_argument("--suffix-orders", type=int, nargs="*", default=[8, 16])
    ap.add_argument("--out", default=str(HERE / "results" / "ngram_counting.json"))
    ap.add_argument("--case", nargs=2, metavar=("BACKEND", "ORDER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        args.backend, args.order = args.case[0], int(args.case[1])
        print(json.dumps(run_case(args)))
        return {}
    cases = [("tables", n) for n in args.table_orders]
    cases += [("suffix_array", n) for n in args.suffix_orders]
    results = []
    for backend, order in cases:
        cmd = [sys.executable, __file__, "--case", backend, str(order)]
        cmd += ["--tokens", str(args.tokens), "--corpus", args.corpus, "--vocab", str(args.vocab)]
        load = os.getloadavg()
        t0 = time.perf_counter()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
        except subprocess.TimeoutExpired:
            out = None
        wall = time.perf_counter() - t0
        if out is None:
            res = {"backend": backend, "order": order, "error": f"timeout {args.case_timeout} s"}
        elif out.returncode:
            res = {"backend": backend, "order": order, "error": out.stderr.strip()[-500:]}
        else:
            res = json.loads(out.stdout.strip().splitlines()[-1])
        res.update({"process_wall_s": round(wall, 2), "loadavg_1m_before": round(load[0], 2)})
        print(json.dumps(res), flush=True)
        results.append(res)
    record = {
        "benchmark": "ngram_counting",
        "corpus": args.corpus,
        "tokens": args.tokens,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": (
            "each case in its own process; peak_rss_gib includes the interpreter, numpy, "
            "and the corpus (rss_before_gib). The machine may be shared: loadavg_1m_before"
        ),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
