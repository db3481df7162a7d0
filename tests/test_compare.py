"""Chapter 10's tables: the Pareto frontier is the set of points nothing beats in both
coordinates, a number a profile lacks stays missing (never borrowed from another profile or a
failed run), every row names a metric the cpu results really hold, and the NFE and sampling
times are read from what each chapter recorded."""

from pathlib import Path

import pytest

from nbutils import compare

ROOT = Path(__file__).resolve().parents[1]


def test_pareto_frontier_by_hand():
    points = [(1, 5), (2, 3), (3, 3), (4, 1), (5, 5), (2, 3)]
    assert compare.pareto(points) == [True, True, False, True, False, True]  # ties both stay
    assert compare.pareto([]) == []


def test_missing_numbers_stay_missing():
    nice = {"status": "ok", "metrics": {"NICE, MNIST: test bits/dim": {"value": 4.4}}}
    failed = {"status": "failed", "metrics": {"multiscale flow: parameters": {"value": 7}}}
    results = {"cpu": {"chapters": {"02": nice, "03": failed}}}
    assert compare.metric(results, "cpu", "02", "NICE, MNIST: test bits/dim") == 4.4
    assert compare.metric(results, "gpu", "02", "NICE, MNIST: test bits/dim") is None
    assert compare.metric(results, "cpu", "03", "multiscale flow: parameters") is None  # failed run
    assert compare.metric(results, "cpu", "02", None) is None
    rows = {r["model"]: r for r in compare.likelihood_table(results)}
    assert rows["NICE"]["cpu"] == 4.4 and rows["NICE"]["gpu"] is None
    assert all(r["gpu"] is None for r in rows.values())
    assert compare.show(None) == "missing" and compare.show(1.23456, ".3f") == "1.235"


def test_every_row_names_a_metric_of_the_cpu_results():
    results = compare.load(ROOT, ("cpu",))
    named = [(r.chapter, r.metric) for r in compare.LIKELIHOODS]
    named += [(r.chapter, n) for r in compare.LIKELIHOODS for n in (r.params, r.train_time) if n]
    named += [(r.chapter, r.metric) for r in compare.SAMPLERS]
    named += [(c, n) for _, c, *names in compare.COSTS for n in names if n]
    absent = [(c, n) for c, n in named if compare.entry(results, "cpu", c, n) is None]
    assert not absent, f"rows name metrics that results/cpu.json does not hold: {absent}"
    table = compare.sample_table(results, "cpu")
    assert all(r["nfe"] is not None and r["fd"] is not None and r["floor"] for r in table)
    assert all(r["n"] in (200, 400) for r in table)  # the cpu sample counts of chapters 04-08


def test_times_are_read_from_the_notes():
    assert compare._seconds_per_1k("NFE 26, 15.28 s per batch of 400", 400) == pytest.approx(38.2)
    assert compare._seconds_per_1k("NFE 10, 2.2 s", 200) == pytest.approx(11.0)
    assert compare._seconds_per_1k("paper: LPIPS loss; ours: L2", 400) is None
    assert compare._seconds("92 / 30 / 24") == 146 and compare._seconds(12.5) == 12.5


def test_a_step_count_is_not_read_as_a_time():
    assert compare._seconds_per_1k("paper: adaptive RK45; ours: 100 Euler steps", 400) is None
    assert compare._seconds_per_1k("45 steps; NFE 45, 0.50 s per batch of 100", 400) == 5.0
