"""The coverage simulation: true values by hand, and a nominal interval covering near 95%."""
import math

import numpy as np
import pytest

from vlmbias.audit.coverage import population, simulate_coverage, true_values


def test_true_values_by_hand():
    p, q = population(0.8, 2), np.array([0.5, 0.5])
    t = true_values(p, q, k=20, n_ndkl=200, rng=np.random.default_rng(0))
    assert t["fd"] == pytest.approx(4.0) and t["tvd"] == pytest.approx(0.3)
    assert t["max_skew_uniform"] == pytest.approx(math.log(1.6)) == pytest.approx(t["max_skew_dataset"])
    assert t["ndkl_uniform"] > 0


def test_wilson_covers_near_nominal_and_every_interval_is_measured():
    t = simulate_coverage(ks=(200,), shares=(0.7,), replicates=80, n_boot=100, attributes=("gender",))
    assert set(t["metric"]) == {"proportion", "rd", "fd", "tvd", "max_skew_uniform", "max_skew_dataset",
                                "ndkl_uniform", "ndkl_dataset"}
    wilson = t[(t.metric == "proportion") & (t.interval_method == "wilson")].iloc[0]
    assert 0.88 <= wilson["coverage"] <= 1.0 and wilson["replicates"] == 80
    assert t.set_index("metric").loc["rd", "true_value"] == pytest.approx(40.0)


def test_coverage_is_counted_by_hand():
    from vlmbias.audit.coverage import _row

    # truth 1: held by [0, 2] and [0, 2]; missed above by [2, 3] (low end above), below by [0, 0.5]
    r = _row({"attribute": "gender", "k": 20}, "tvd", "x", 1.0, [0, 0, 2, 0], [2, 0.5, 3, 2])
    assert (r["coverage"], r["low_miss"], r["high_miss"]) == (0.5, 0.25, 0.25)
    assert r["mean_width"] == pytest.approx((2 + 0.5 + 1 + 2) / 4) and r["replicates"] == 4


def test_a_degenerate_population_is_always_covered_by_every_method():
    """Share 1: every ranking is all Male, every estimate equals the true value, and an interval
    that holds its estimate covers it in every replicate (coverage exactly 1)."""
    t = simulate_coverage(ks=(20,), shares=(1.0,), replicates=10, n_boot=100, attributes=("gender",),
                          interval=["bootstrap-normal", "dirichlet"], n_ndkl=50)
    assert set(t["interval_method"]) == {"wilson", "clopper-pearson", "bootstrap-normal", "dirichlet"}
    assert (t["coverage"] == 1.0).all(), t[t["coverage"] < 1]
    assert t.set_index(["metric", "interval_method"]).loc[("tvd", "dirichlet"), "true_value"] == 0.5


def test_rank_dependent_truth_by_hand():
    """Decay: the focal share falls from 0.8 to 0.5 down the ranking; the count metrics' truth is
    that of the mean share 0.65, and NDKL's truth is above the iid-at-0.65 one (the top ranks,
    which NDKL weights most, are more skewed)."""
    from vlmbias.audit.coverage import rank_profile

    prof = rank_profile("decay", 2, 200)
    assert prof[0, 0] == pytest.approx(0.8) and prof[-1, 0] == pytest.approx(0.5)
    q = np.array([0.5, 0.5])
    t = true_values(prof, q, 200, 2000, np.random.default_rng(0))
    flat = true_values(population(0.65, 2), q, 200, 2000, np.random.default_rng(0))
    assert t["tvd"] == pytest.approx(0.15) and t["fd"] == pytest.approx(0.65 / 0.35)
    assert t["ndkl_uniform"] > flat["ndkl_uniform"] + 0.01


def test_parity_cells_are_simulated_for_every_class_count():
    t = simulate_coverage(ks=(20,), shares=("parity", 0.8, "decay"), replicates=5, n_boot=50,
                          attributes=("gender", "age4"), interval=["dirichlet-test"], n_ndkl=50, n_sim=200)
    cells = t.drop_duplicates(["classes", "scenario", "share"])
    assert set(map(tuple, cells[["classes", "scenario", "share"]].to_numpy().tolist())) == {
        (2, "iid", 0.5), (2, "iid", 0.8), (2, "decay", 0.65), (4, "iid", 0.25), (4, "iid", 0.8), (4, "decay", 0.65)}
    assert t.loc[(t["scenario"] == "iid") & (t["share"] == 0.25) & (t["metric"] == "tvd"), "true_value"].iloc[0] == 0


def test_lookup_table_is_what_undercovering_reads():
    from vlmbias.audit import metrics as m
    from vlmbias.audit.coverage import lookup_table

    t = simulate_coverage(ks=(20,), shares=(0.5,), replicates=5, n_boot=50, attributes=("gender",),
                          interval=["dirichlet"], n_ndkl=50)
    lookup = lookup_table(t)
    assert list(lookup.columns) == list(m._coverage().columns)
    assert set(lookup["interval_method"]) == {"dirichlet"} and set(lookup["classes"]) == {2}
