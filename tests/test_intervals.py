"""Intervals that hold at parity, FD honest about being unbounded, and the parity verdict."""
import numpy as np
import pandas as pd
import pytest

from vlmbias.audit import metrics as m

RACE = ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian"]


def _tables(codes_by_query, classes, interval="dirichlet-test", n_boot=200, n_sim=2000, seed=0):
    k = codes_by_query.shape[1]
    r = pd.DataFrame({"model": "m", "dataset": "d", "query_set": "s",
                      "query_id": np.repeat(np.arange(len(codes_by_query)).astype(str), k), "query": "q",
                      "rank": np.tile(np.arange(1, k + 1), len(codes_by_query)),
                      "race": np.asarray(classes, dtype=object)[codes_by_query.ravel()]})
    dist = pd.DataFrame({"attribute": "race", "class": classes, "count": 100, "percent": 100.0 / len(classes)})
    return m.audit_tables(r, dist, [k], n_boot=n_boot, n_sim=n_sim, seed=seed, interval=interval)


@pytest.mark.parametrize("interval", ["dirichlet", "dirichlet-test"])
def test_fd_with_an_absent_class_is_unbounded_not_a_large_float(interval):
    counts = [8, 3, 3, 2, 2, 2, 0]
    codes = np.repeat(np.arange(7), counts)[None, :]
    _, sm = _tables(codes, RACE, interval)
    row = sm.iloc[0]
    assert row["fd"] == 4.0                      # thesis zero handling: 8 / 2
    assert row["fd_high"] == np.inf and 1.0 <= row["fd_low"] <= 4.0


def test_fd_simultaneous_by_hand():
    # two classes 10/10 at level 0.95: Bonferroni -> each Clopper-Pearson at 97.5%
    lo, hi = m.fd_simultaneous([10, 10], [True, True], 0.95)
    from scipy import stats
    L, U = stats.beta.ppf(0.0125, 10, 11), stats.beta.ppf(0.9875, 11, 10)
    assert lo == 1.0 and hi == pytest.approx(U / L)
    assert m.fd_simultaneous([5, 0, 3], [True] * 3, 0.95)[1] == np.inf


def test_adjust_p_by_hand():
    p = [0.01, 0.04, 0.03, 0.5, np.nan]
    bh = m.adjust_p(p, "benjamini-hochberg")
    assert bh[:4] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5]) and np.isnan(bh[4])
    assert m.adjust_p(p, "holm")[:4] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    with pytest.raises(m.MetricsInputError, match="adjustment"):
        m.adjust_p(p, "bonferonni")


def test_ray_interval_reaches_the_target_only_where_the_test_keeps_it():
    t = np.array([0.5, 0.5])
    tvd = lambda x: m._tvd(x, t)
    lo, hi = m.ray_interval(np.array([11.0, 9.0]), t, tvd, p_target=0.8, level=0.95, seed=0)
    assert lo == 0.0 and hi >= 0.05
    lo, hi = m.ray_interval(np.array([19.0, 1.0]), t, tvd, p_target=1e-4, level=0.95, seed=0)
    assert 0.1 < lo < 0.45 <= hi                   # the estimate 0.45 lies within


def test_ray_draws_shared_between_metrics_give_the_same_intervals():
    """TVD and MaxSkew at the same target walk the same ray: with a shared `draws` dict the second
    metric reuses the first one's simulated counts (the same stream: the same draws) and its
    interval is exactly what it gets on its own."""
    c, q = np.array([30.0, 12.0, 8.0]), np.array([0.5, 0.3, 0.2])
    tvd, skew = (lambda x: m._tvd(x, q)), (lambda x: m._rowmax(m._skew(x, q)))
    alone = [m.ray_interval(c, q, f, p_target=0.01, level=0.95, seed=2) for f in (tvd, skew)]
    draws = {}
    shared = [m.ray_interval(c, q, tvd, p_target=0.01, level=0.95, seed=2, draws=draws)]
    grids = len(draws)
    shared.append(m.ray_interval(c, q, skew, p_target=0.01, level=0.95, seed=2, draws=draws))
    assert shared == alone
    assert 1 <= grids <= 2 and len(draws) <= 2 * grids  # the coarse grid was drawn once
    assert any(len(path) == 4 for path in draws)  # (n, sims, seed, coarse grid): shared by both


def test_ndkl_against_several_targets_equals_one_at_a_time():
    codes = np.random.default_rng(0).integers(0, 3, size=(50, 40))
    u, q = np.full(3, 1 / 3), np.array([0.6, 0.3, 0.1])
    both = m._ndkl_codes_targets(codes, 3, [u, q])
    for values, t in zip(both, (u, q)):
        assert np.array_equal(values, m._ndkl_codes(codes, 3, t))
    # the definition, prefix by prefix: sum_i KL(top-i || q) / log2(i + 1), normalised
    for values, t in zip(both, (u, q)):
        kl = []
        for i in range(1, 41):
            share = np.bincount(codes[0, :i], minlength=3) / i
            kl.append(sum(s_ * np.log(s_ / t_) for s_, t_ in zip(share, t) if s_ > 0))
        w = 1 / np.log2(np.arange(2, 42))
        assert values[0] == pytest.approx(np.dot(kl, w) / w.sum(), rel=1e-9, abs=1e-12)


def test_unbiased_model_at_parity_is_rarely_flagged_and_its_intervals_hold_zero():
    """7 groups at parity, 200 queries of k = 20: the parity test (Benjamini-Hochberg) flags at most
    5% + 2 Monte-Carlo SE of them, and the MaxSkew / TVD intervals hold 0 in at least 95% - 2 SE
    (the old `dirichlet` method's held it in about 60%)."""
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 7, size=(200, 20))
    _, sm = _tables(codes, RACE)
    se = np.sqrt(0.05 * 0.95 / 200)
    assert (sm["skew_test"] == "skewed").mean() <= 0.05 + 2 * se
    for metric in ("tvd", "max_skew_uniform"):
        assert (sm[f"{metric}_low"] <= 1e-12).mean() >= 0.95 - 2 * se, metric
    assert set(sm["skew_test"]) <= {"skewed", "no skew shown"}


def test_a_planted_skew_is_found():
    rng = np.random.default_rng(8)
    p = np.array([0.5] + [0.5 / 6] * 6)
    codes = rng.choice(7, size=(30, 200), p=p)
    _, sm = _tables(codes, RACE, n_boot=100)
    assert (sm["skew_test"] == "skewed").all()
    assert (sm["max_skew_uniform_low"] > 0).all() and (sm["tvd_low"] > 0.2).all()


def test_leaderboard_mean_of_an_unbounded_member_is_unbounded_above():
    from vlmbias.audit.leaderboard import mean_interval

    mean, lo, hi, n = mean_interval([1.0, 2.0], [0.5, 1.0], [1.5, np.inf])
    # lower sides 0.5 and 1.0 are 1.96 SE each: half = sqrt(0.5^2 + 1^2) / 2
    assert (mean, hi, n) == (1.5, np.inf, 2) and lo == pytest.approx(1.5 - np.sqrt(1.25) / 2)


def test_posterior_codes_draw_each_class_by_its_share():
    shares = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    codes = m.posterior_codes(shares, 2000, seed=0)
    u = np.random.default_rng(0).random((3, 2000))  # the same uniforms: class = boundaries passed
    assert np.array_equal(codes[0], np.where(u[0] < 0.2, 0, np.where(u[0] < 0.5, 1, 2)))
    assert (codes[1] == 0).all() and (codes[2] == 2).all()
    assert np.bincount(codes[0], minlength=3) / 2000 == pytest.approx([0.2, 0.3, 0.5], abs=0.03)


@pytest.mark.parametrize("n_classes", [2, 5, 7, 14])
def test_occurrence_numbers_count_each_class_down_the_ranking(n_classes):
    codes = np.random.default_rng(n_classes).integers(0, n_classes, size=(30, 50))
    expected = np.zeros_like(codes)
    for row in range(30):
        seen = {}
        for j, c in enumerate(codes[row]):
            seen[c] = seen.get(c, 0) + 1
            expected[row, j] = seen[c]
    assert np.array_equal(m._occurrences(codes, n_classes), expected)
    assert np.array_equal(m._occurrences(np.array([[3, 3, 0, 3, 0]]), n_classes if n_classes > 3 else 4),
                          [[1, 2, 1, 3, 2]])
