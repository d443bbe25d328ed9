"""Where the time goes: the phase timer, and the phases a tiny digits run records."""

import json

import pytest
from dsb_testing import tiny_config

import dsb.timing as timing
from dsb.data.sources import load_split
from dsb.main import _report
from dsb.train import train


def test_phases_are_exclusive_and_add_up_to_the_total(monkeypatch):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    timer = timing.PhaseTimer()  # t = 0
    with timer.active():
        with timing.phase("outer"):  # 1 .. 8: 7 s, of which 1 + 3 in inner
            with timing.phase("inner"):  # 2 .. 3: 1 s
                pass
            with timing.phase("inner"):  # 4 .. 7: 3 s, of which 1 in deep
                with timing.phase("deep"):  # 5 .. 6: 1 s
                    pass
    assert timing.phase("unrecorded").__class__.__name__ == "nullcontext"
    rec = timer.record()  # t = 9
    phases = {n: (p["s"], p["count"]) for n, p in rec["phases"].items()}
    assert phases == {"inner": (1.0 + 2.0, 2), "deep": (1.0, 1), "outer": (7.0 - 4.0, 1)}
    assert rec["total_s"] == 9.0 and rec["other_s"] == 9.0 - 7.0
    table = timing.format_timings(rec)
    # Longest first (ties in the order the phases first ended), then other and the total.
    names = [line.split()[0] for line in table.splitlines()]
    assert names == ["phase", "inner", "outer", "deep", "other", "total"]


TINY_PROBES = (
    "evals.dsb.maxent_sets=[ics]",
    "evals.dsb.ot_sets=[mean_shift]",
    "evals.dsb.num_samples=100",
    "~evals.poly",
    "figures=false",
)


@pytest.mark.usefixtures("tfds_dir", "fresh_user_cache")  # the first run builds its sets
def test_a_run_records_where_its_time_went_and_a_second_run_loads_its_probe_sets(
    tmp_path, monkeypatch
):
    load_split.cache_clear()  # read the splits in this run, whatever ran before it
    cfg = tiny_config(*TINY_PROBES)
    result = train(cfg, tmp_path / "a")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    rec = summary["timings"]
    assert rec == result.timings
    phases = {n: p["count"] for n, p in rec["phases"].items()}
    saved = sorted(int(p.name) for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert saved == [0, 1, 2, 4, 8, 16]
    assert phases == {
        "init": 1,
        "data/digits/train": 1,
        "data": 1,
        "restore": 1,
        "eval_build/val": 1,
        "data/digits/test": 1,
        "eval_build/dsb": 1,
        "stats": 1,
        "probe_set/maxent-ics/built": 1,
        "probe_set/ot-mean_shift/built": 1,
        # every evaluator at every checkpoint; one save per checkpoint
        "eval/val": len(saved),
        "eval/dsb": len(saved),
        "checkpoint": len(saved),
        "compile": 1,
        "train_steps": 1,
        "checkpoint/wait": 1,
    }
    # Disjoint phases: they never add up to more than the wall time, and cover most of it.
    named = sum(p["s"] for p in rec["phases"].values())
    assert all(p["s"] >= 0 for p in rec["phases"].values())
    assert named <= rec["total_s"] and rec["other_s"] == pytest.approx(rec["total_s"] - named)
    assert named >= 0.8 * rec["total_s"], rec
    # The command line's closing report prints the table.
    report = _report(result)
    assert "where the time went" in report and "  train_steps " in report
    lines = (tmp_path / "a" / "timings.jsonl").read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines] == ["finished"]
    assert json.loads(lines[0])["start_step"] == 0 and json.loads(lines[0])["final_step"] == 16

    # A second run directory, same user cache: every probe set is loaded, none built, and
    # the class statistics are loaded too (a refit would raise).
    def refit(*a, **k):
        raise AssertionError("the second run refitted the class statistics")

    monkeypatch.setattr("dsb.stats.moments.fit_class_stats", refit)
    again = train(cfg, tmp_path / "b").timings["phases"]
    sets = sorted(n for n in again if n.startswith("probe_set/"))
    assert sets == ["probe_set/maxent-ics/loaded", "probe_set/ot-mean_shift/loaded"]
    assert again["probe_set/maxent-ics/loaded"]["count"] == 1
