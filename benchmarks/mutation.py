"""Mutation testing of one dsb module against its own area's tests, with cosmic-ray.

cosmic-ray writes each mutant into the source file on disk and runs the test command in a
fresh process, so every mutant gets a clean JAX runtime (no forked XLA threads), then
restores the file. One command per module:

    python benchmarks/mutation.py dsb/stats/report.py
        [--tests tests/stats/test_report.py ...]   (default: the module's row of TESTS)
        [--changed main]      only mutants on lines changed against a git ref (cr-filter-git)
        [--functions f g]     only mutants inside these top-level functions / methods
        [--sample N --seed S] a seeded random sample of N of the executed mutants
        [--session PATH]      the cosmic-ray session (default: a temporary directory)
        [--dry-run]           count the mutants after the filters; run nothing
        [--rerun-survivors]   rerun only the session's untriaged survivors, after adding tests
        [--summarize]         only rewrite the summary from the session (after triage)

Steps: ``cosmic-ray init`` (config ``benchmarks/results/mutation/<name>.toml``, written
here), ``cr-filter-operators`` (the operator exclusions below), optionally
``cr-filter-git``; one baseline run of the tests under ``coverage``: it must pass, sets the
per-mutant timeout (4 x its wall time, at least 60 s) and marks the mutants on statements
the tests never execute as survived without running them ("not executed"); then
``cosmic-ray exec``. Results go to ``benchmarks/results/mutation/summary.json`` (one entry
per module, replaced on each run) and ``summary.md``.

Score = killed / (total - equivalent). A timeout counts as killed (cosmic-ray's rule) and
is also counted on its own. Equivalent mutants are the survivors listed, with a one-line
reason, in ``benchmarks/results/mutation/equivalent.json``, keyed
``"<file>:<line>:<col> <operator>/<occurrence>"`` (the key the summary prints for each
survivor; the occurrence tells apart the variants of one operator at one place, and is
what ``cosmic-ray apply <file> <operator> <occurrence>`` takes). A survivor that is not
equivalent but deliberately left alive has its reason in ``left_alive.json`` (same keys);
it stays in the score as survived.

Operators left out (``EXCLUDED_OPERATORS``): binary-operator replacements by the bitwise
and shift operators (``| & ^ << >>``) and by ``%``, and ``//`` as a replacement for
``+ - * **``; comparisons replaced by ``is``/``is not`` and ``is``/``is not`` replaced by an
ordering or ``==``/``!=``. On float arrays the bitwise and shift mutants raise a TypeError
as soon as the line runs, so they are killed exactly when the line is executed, which the
arithmetic mutants of the same line already require; ``x is None`` -> ``x == None`` is
equivalent and ``x < y`` -> ``x is y`` is a constant False. All other cosmic-ray operators
run, number replacement (which catches factor-of-2 bugs) included. Mutants inside type
annotations are skipped in modules with ``from __future__ import annotations`` (the
annotation is a string, never evaluated: every such mutant is equivalent).

Runs must be sequential on a shared machine: cosmic-ray's local distributor runs one
mutant at a time; do not start two sessions at once (both would mutate the same tree).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import random
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutation"

PYTEST = "python -m pytest -x -q -p no:cacheprovider"
"""``-x``: a mutant is killed at its first failing test. The default markers apply
(``-m 'not slow and not reference'`` from pyproject.toml)."""

TESTS = {
    "dsb/stats/report.py": [
        "tests/stats/test_report.py",
        "tests/stats/test_maxent.py::test_sampler_checks_state_their_claims",
    ],
    "dsb/mdl/core.py": [
        "tests/mdl/test_mdl_contracts.py",
        "tests/mdl/test_mdl.py::test_chunk_bounds_log_spaced",
        "tests/mdl/test_mdl.py::test_chunk_sum_equals_total_and_uniform_first_chunk",
    ],
    "dsb/mdl/aggregate.py": ["tests/mdl/test_aggregate.py"],
    "dsb/jacobian/certified.py": [
        "tests/jacobian/test_certificate_contracts.py",
        "tests/jacobian/test_kpm_cost_model.py",
    ],
    "dsb/evals/ngram_probes.py": ["tests/evals/test_ngram_probes.py"],
    "dsb/stats/erasure.py": [
        "tests/stats/test_erasure_contracts.py",
        "tests/stats/test_leace_offset.py",
        "tests/stats/test_erasure.py",
    ],
    "dsb/stats/ot.py": ["tests/stats/test_ot_contracts.py", "tests/stats/test_ot.py"],
    "dsb/train.py": [
        "tests/test_train.py::test_nan_loss_stops_with_the_step",
        "tests/test_train_contracts.py",
        "tests/test_train.py::test_evaluator_when_option",
        "tests/test_early_stopping.py::test_train_stops_early_on_a_subset_of_the_erased_split",
    ],
    "dsb/step.py": [
        "tests/test_step_contracts.py",
        "tests/test_run_pieces.py::test_train_state_abstract_matches_create_and_is_frozen",
        "tests/test_train.py::test_augmentation_is_per_example_and_deterministic",
        "tests/test_train.py::test_nan_loss_stops_with_the_step",
        "tests/test_train_contracts.py",
    ],
    "dsb/stats/maxent.py": [
        "tests/stats/test_maxent_contracts.py",
        "tests/stats/test_maxent.py",
    ],
}
"""The narrowest fast test selection that exercises each module, fastest files first."""

EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*_(BitOr|BitAnd|BitXor|LShift|RShift|Mod)$",
    r"core/ReplaceBinaryOperator_(Add|Sub|Mul|Pow)_FloorDiv$",
    r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_(Eq|NotEq|Lt|LtE|Gt|GtE)$",
]

ENV = {
    "PYTHONPATH": ".",
    "JAX_PLATFORMS": "cpu",
    "JAX_COMPILATION_CACHE_DIR": str(Path(tempfile.gettempdir()) / "dsb-mutation-jax-cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}
"""Set for every test run: this checkout first on the path, and one persistent compilation
cache shared by all mutants (a mutant's changed code compiles anew; the rest is reused)."""


META_KEYS = (
    "command", "tests", "sample", "seed", "functions", "changed", "baseline_s", "filtered",
    "per_mutant_s", "wall_s", "date", "rerun_survivors",
)  # fmt: skip


def name_of(module: str) -> str:
    return module.removeprefix("dsb/").removesuffix(".py").replace("/", "_")


def write_config(
    module: str, tests: list[str], timeout: float, changed: str | None, out: Path = OUT
) -> Path:
    env = " ".join(f"{k}={v}" for k, v in ENV.items())
    lines = [
        "# Written by benchmarks/mutation.py; run: python benchmarks/mutation.py " + module,
        "[cosmic-ray]",
        f'module-path = "{module}"',
        f"timeout = {timeout:.0f}",
        "excluded-modules = []",
        f'test-command = "env {env} {PYTEST} {" ".join(tests)}"',
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
        "[cosmic-ray.filters.operators-filter]",
        "exclude-operators = [",
        *[f"  '{e}'," for e in EXCLUDED_OPERATORS],
        "]",
    ]
    if changed:
        lines += ["", "[cosmic-ray.filters.git-filter]", f'branch = "{changed}"']
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name_of(module)}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def sh(*cmd: str) -> None:
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def key(m) -> str:
    return f"{m.module_path}:{m.start_pos[0]}:{m.start_pos[1]} {m.operator_name}/{m.occurrence}"


def annotation_spans(module: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of the type annotations of ``module`` when it has
    ``from __future__ import annotations`` (they are strings then, never evaluated, so a
    mutant inside one is equivalent); empty otherwise."""
    tree = ast.parse((ROOT / module).read_text())
    lazy = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if not lazy:
        return []
    spans = []
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            anns.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            anns.append(node.returns)
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in anns]
    return spans


def function_lines(module: str, names: list[str]) -> set[int]:
    """The lines of the top-level functions, classes' methods or classes named ``names``."""
    tree = ast.parse((ROOT / module).read_text())
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in names:
            lines.update(range(node.lineno, node.end_lineno + 1))
    missing = set(names) - {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)
    }
    if missing:
        raise SystemExit(f"no such functions in {module}: {sorted(missing)}")
    return lines


def baseline(module: str, tests: list[str], env: dict) -> tuple[float, set[int]]:
    """Run the tests once under coverage: (wall seconds, statement lines never executed).
    Without the ``coverage`` package: a plain run, and every mutant is run."""
    try:
        import coverage
    except ImportError:
        coverage = None
    data = Path(tempfile.mkdtemp()) / ".coverage"
    cmd = [sys.executable, "-m", *shlex.split(PYTEST)[2:], *tests]
    if coverage is not None:
        cmd[1:2] = ["-m", "coverage", "run", f"--data-file={data}", f"--include={module}", "-m"]
    t0 = time.perf_counter()
    print("+", shlex.join(cmd), flush=True)
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode:
        raise SystemExit("the tests fail on the unmutated code; fix that first")
    wall = time.perf_counter() - t0
    if coverage is None:
        return wall, set()
    cov = coverage.Coverage(data_file=str(data))
    cov.load()
    _, _, _, missing, _ = cov.analysis2(str(ROOT / module))
    return wall, set(missing)


def mark(db, items, outcome: str, why: str) -> None:
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    if not items:
        return
    if outcome == "skipped":
        res = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=why)
    else:
        res = WorkResult(
            worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.SURVIVED, output=why
        )
    db.set_multiple_results([w.job_id for w in items], res)


def summarize(module: str, session: Path, meta: dict) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    eq_path, left_path = OUT / "equivalent.json", OUT / "left_alive.json"
    equivalent = json.loads(eq_path.read_text()) if eq_path.exists() else {}
    left_alive = json.loads(left_path.read_text()) if left_path.exists() else {}
    counts = dict.fromkeys(
        ["total", "killed", "survived", "not_executed", "timeout", "incompetent", "skipped"], 0
    )
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = sum(1 for _ in db.pending_work_items)
        for item, res in db.completed_work_items:
            m = item.mutations[0]
            if res.worker_outcome == WorkerOutcome.SKIPPED:
                counts["skipped"] += 1
                continue
            counts["total"] += 1
            if res.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            elif res.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
                counts["timeout"] += res.output == "timeout"
            else:
                not_run = res.output == "not executed by the selected tests"
                counts["not_executed" if not_run else "survived"] += 1
                k = key(m)
                survivors.append(
                    {
                        "key": k,
                        "not_executed": not_run,
                        "equivalent": equivalent.get(k),
                        "left_alive": left_alive.get(k),
                        "diff": "\n".join(
                            ln
                            for ln in (res.diff or "").splitlines()
                            if ln[:1] in "+-" and ln[:3] not in ("+++", "---")
                        ),
                    }
                )
    n_eq = sum(1 for s in survivors if s["equivalent"])
    denom = counts["total"] - counts["incompetent"] - n_eq
    entry = {
        **meta,
        **counts,
        "pending": pending,
        "equivalent": n_eq,
        "score": round(counts["killed"] / denom, 4) if denom else None,
        "survivors": sorted(survivors, key=lambda s: (int(s["key"].split(":")[1]), s["key"])),
    }
    path = OUT / "summary.json"
    allr = json.loads(path.read_text()) if path.exists() else {}
    allr[module] = entry
    path.write_text(json.dumps(dict(sorted(allr.items())), indent=1) + "\n")
    write_markdown(allr)
    return entry


def write_markdown(allr: dict) -> None:
    cols = ["filtered", "total", "killed", "survived", "not_executed", "equivalent", "timeout"]
    cols += ["score", "per_mutant_s"]
    out = [
        "# Mutation scores (cosmic-ray)",
        "",
        "Written by `benchmarks/mutation.py` from `summary.json`; how to run and triage: "
        "docs/testing.md. `filtered`: mutants after the operator, annotation and function "
        "filters; `total`: those run (all, or the sample) plus the not-executed ones. "
        "Score = killed / (total - equivalent); `not_executed` survivors sit on statements "
        "the selected tests never run (counted as survived); both columns include the "
        "equivalent ones. Timeouts count as killed.",
        "",
        "| module | " + " | ".join(cols) + " | wall (min) | date | selection |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for mod, e in allr.items():
        sel = (
            "all"
            if not (e.get("sample") or e.get("functions") or e.get("changed"))
            else (f"sample {e['sample']}" if e.get("sample") else "")
            + (f" functions {', '.join(e['functions'])}" if e.get("functions") else "")
            + (f" changed vs {e['changed']}" if e.get("changed") else "")
        )
        score = "n/a" if e["score"] is None else f"{100 * e['score']:.1f}%"
        vals = [str(e.get(c, "")) for c in cols[:-2]] + [score, str(e.get("per_mutant_s", ""))]
        out.append(
            f"| {mod} | " + " | ".join(vals) + f" | {e['wall_s'] / 60:.1f} | {e['date']} | "
            f"{sel.strip()} |"
        )
    for mod, e in allr.items():
        out += ["", f"## {mod}", "", f"Command: `{e['command']}`", ""]
        out += [f"Tests: {' '.join(e['tests'])}", ""]
        if not e["survivors"]:
            out.append("No survivors.")
        for s in e["survivors"]:
            if s["equivalent"]:
                verdict = f"equivalent: {s['equivalent']}"
            elif s.get("left_alive"):
                verdict = f"survived, left alive: {s['left_alive']}"
            else:
                verdict = "not executed" if s["not_executed"] else "SURVIVED (untriaged)"
            diff = s["diff"].replace("\n", " / ")
            out.append(f"- `{s['key']}` {verdict}  \n  `{diff}`")
    (OUT / "summary.md").write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", help="e.g. dsb/stats/report.py")
    ap.add_argument("--tests", nargs="+", help="pytest selection (default: TESTS[module])")
    ap.add_argument("--changed", metavar="REF", help="only lines changed against REF")
    ap.add_argument("--functions", nargs="+", help="only mutants inside these definitions")
    ap.add_argument("--sample", type=int, help="run a seeded random sample of N mutants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--session", type=Path)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="run the session's survivors again (after adding tests; kills stay kills), "
        "except those already in equivalent.json or left_alive.json",
    )
    ap.add_argument(
        "--summarize",
        action="store_true",
        help="only rewrite the summary from the session (after editing equivalent.json)",
    )
    args = ap.parse_args(argv)
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    module = args.module
    tests = args.tests or TESTS.get(module)
    if not tests:
        raise SystemExit(f"no tests for {module}: add a row to TESTS or pass --tests")
    env = dict(os.environ, **ENV)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    os.environ.update(env)  # cosmic-ray's test runs inherit this environment
    session = (
        args.session or Path(tempfile.gettempdir()) / "dsb-mutation" / f"{name_of(module)}.sqlite"
    )
    session.parent.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        old = json.loads((OUT / "summary.json").read_text())[module]
        meta = {k: v for k, v in old.items() if k in META_KEYS}
        summarize(module, session, meta)
        return
    t0 = time.perf_counter()
    cfg = write_config(module, tests, 60, args.changed, session.parent if args.dry_run else OUT)
    bindir = Path(sys.executable).parent
    if args.rerun_survivors:
        old = json.loads((OUT / "summary.json").read_text())[module]
        triaged = set()
        for name in ("equivalent.json", "left_alive.json"):
            if (OUT / name).exists():
                triaged |= set(json.loads((OUT / name).read_text()))
        with use_db(str(session), WorkDB.Mode.open) as db:
            rerun = [
                item.job_id
                for item, res in db.completed_work_items
                if res.worker_outcome == WorkerOutcome.NORMAL
                and res.test_outcome == TestOutcome.SURVIVED
                and key(item.mutations[0]) not in triaged
            ]
        con = sqlite3.connect(session)
        with con:  # triaged survivors (equivalent, left alive) keep their result
            con.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in rerun])
        con.close()
    else:
        sh(str(bindir / "cosmic-ray"), "init", str(cfg), str(session), "--force")
        sh(str(bindir / "cr-filter-operators"), str(session), str(cfg))
    if args.changed and not args.rerun_survivors:
        sh(str(bindir / "cr-filter-git"), "--config", str(cfg), str(session))
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = list(db.pending_work_items)
        spans = annotation_spans(module)

        def in_annotation(w):
            p = tuple(w.mutations[0].start_pos)
            return any(a <= p < b for a, b in spans)

        mark(db, [w for w in items if in_annotation(w)], "skipped", "in a type annotation")
        items = [w for w in items if not in_annotation(w)]
        if args.functions:
            keep = function_lines(module, args.functions)
            out = [w for w in items if w.mutations[0].start_pos[0] not in keep]
            mark(db, out, "skipped", "outside --functions")
            items = [w for w in items if w.mutations[0].start_pos[0] in keep]
        print(f"{len(items)} mutants after the filters", flush=True)
        if args.dry_run:
            return
        wall, missing = baseline(module, tests, env)
        timeout = max(60.0, 4 * wall)
        cfg = write_config(module, tests, timeout, args.changed)
        dead = [w for w in items if w.mutations[0].start_pos[0] in missing]
        mark(db, dead, "survived", "not executed by the selected tests")
        items = [w for w in items if w.mutations[0].start_pos[0] not in missing]
        if args.sample and args.sample < len(items) and not args.rerun_survivors:
            chosen = set(random.Random(args.seed).sample(range(len(items)), args.sample))
            mark(db, [w for i, w in enumerate(items) if i not in chosen], "skipped", "not sampled")
        n_run = len(items) if args.rerun_survivors else min(len(items), args.sample or len(items))
        print(
            f"baseline {wall:.1f} s, timeout {timeout:.0f} s; {len(dead)} mutants not executed; "
            f"running {n_run} (~{n_run * wall / 60:.0f} min)",
            flush=True,
        )
    t_exec = time.perf_counter()
    sh(str(bindir / "cosmic-ray"), "exec", str(cfg), str(session))
    t_exec = time.perf_counter() - t_exec
    cmd = "python benchmarks/mutation.py " + module
    for flag in ("changed", "sample", "seed", "functions"):
        v = getattr(args, flag)
        if v and not (flag == "seed" and not args.sample):
            cmd += f" --{flag} " + (" ".join(v) if isinstance(v, list) else str(v))
    if args.tests:
        cmd += " --tests " + " ".join(args.tests)
    meta = {
        "command": cmd,
        "tests": tests,
        "sample": args.sample,
        "seed": args.seed if args.sample else None,
        "functions": args.functions,
        "changed": args.changed,
        "baseline_s": round(wall, 1),
        "filtered": len(items) + len(dead),  # after every filter but --sample
        "per_mutant_s": round(t_exec / max(n_run, 1), 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "date": datetime.date.today().isoformat(),
    }
    if args.rerun_survivors:  # the first run's settings, this rerun's time added
        meta = {k: v for k, v in old.items() if k in META_KEYS} | {"tests": tests}
        meta["wall_s"] = round(old["wall_s"] + time.perf_counter() - t0, 1)
        meta["rerun_survivors"] = f"{len(items)} survivors rerun {meta['date']}"
    e = summarize(module, session, meta)
    print(json.dumps({k: v for k, v in e.items() if k != "survivors"}, indent=1))
    dirty = subprocess.run(["git", "diff", "--quiet", "--", module], cwd=ROOT).returncode
    if dirty:
        raise SystemExit(f"{module} differs from git after the run: check it is not mutated")


if __name__ == "__main__":
    main()
