"""Before/after comparison: verdicts on TVD, MaxSkew and NDKL intervals, never on FD."""
import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit import metrics as m
from vlmbias.mitigate.compare import compare


def _audit(genders):
    r = pd.DataFrame({"model": "m", "dataset": "d", "query_set": "s", "query_id": "q", "query": "a doctor",
                      "rank": range(1, len(genders) + 1), "gender": genders})
    dist = pd.DataFrame({"attribute": "gender", "class": ["Male", "Female"], "count": [50, 50],
                         "percent": [50.0, 50.0]})
    classes, summary = m.audit_tables(r, dist, [20], n_boot=500)
    return summary, classes


def test_all_male_to_mixed_improves_on_tvd_and_fd_is_not_judged():
    base = _audit(["Male"] * 20)                      # FD 1.0 (thesis zero handling), TVD 0.5
    after = _audit(["Male", "Female"] * 10)           # FD 1.0, TVD 0
    worse = _audit(["Male"] * 15 + ["Female"] * 5)    # FD 3.0: a raw FD reading would call this worse
    table, summary = compare(base, {"mixed": after, "partly": worse})
    v = table.set_index(["method", "metric"])["verdict"]
    assert v[("mixed", "tvd")] == "improved" and v[("mixed", "max_skew_uniform")] == "improved"
    assert v[("partly", "fd")] == "not judged" and v[("mixed", "fd")] == "not judged"
    assert table.set_index(["method", "metric"]).loc[("partly", "fd"), "value_after"] == 3.0
    s = summary.set_index(["method", "metric"])
    assert s.loc[("mixed", "tvd"), "improved"] == 1 and bool(s.loc[("mixed", "tvd"), "judged"])
    assert s.loc[("partly", "fd"), "improved"] == 0 and not s.loc[("partly", "fd"), "judged"]
    # two classes: FD's per-query intervals are bounded, and so is its mean's
    assert np.isfinite(s.loc[("partly", "fd"), ["mean_before_low", "mean_after_high"]].astype(float)).all()
    assert s.loc[("mixed", "tvd"), ["mean_before_low", "mean_after_high"]].notna().all()


def test_overlapping_intervals_are_no_clear_change():
    a, b = _audit(["Male"] * 11 + ["Female"] * 9), _audit(["Male"] * 10 + ["Female"] * 10)
    table, _ = compare(a, {"same": b})
    assert (table.loc[table["metric"] != "fd", "verdict"] == "no clear change").all()


def test_summary_without_interval_columns_is_refused():
    base = _audit(["Male"] * 20)
    with pytest.raises(VlmbiasError, match="lacks column"):
        compare(base, {"old": (base[0].drop(columns=["tvd_low"]), base[1])})


def test_an_unbounded_member_makes_the_mean_unbounded_above():
    from vlmbias.mitigate.compare import _mean_interval

    g = pd.DataFrame({"value_before": [2.0, 4.0], "low_before": [1.0, 2.0], "high_before": [3.0, np.inf]})
    r = _mean_interval(g, "before")
    # lower side: SEs (2 - 1) / 1.96 and (4 - 2) / 1.96 -> half = sqrt(1 + 4) / 2
    assert r["mean_before_high"] == np.inf and r["mean_before_low"] == pytest.approx(3.0 - np.sqrt(5) / 2)


def test_the_parity_verdict_is_carried_before_and_after():
    base = _audit(["Male"] * 20)                      # all male: skewed (p ~ 1e-6 < 0.05)
    after = _audit(["Male", "Female"] * 10)           # 10/10: no skew shown
    table, summary = compare(base, {"mixed": after})
    assert set(table["skew_before"]) == {"skewed"} and set(table["skew_after"]) == {"no skew shown"}
    row = summary.set_index("metric").loc["tvd"]
    assert (row["skewed_before"], row["skewed_after"]) == (1, 0)
