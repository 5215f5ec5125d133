"""Before/after comparison: verdicts on TVD, MaxSkew and NDKL intervals, never on FD."""
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
    # FD's mean gets no interval (its per-query ones are unbounded near an absent class); TVD's does
    assert s.loc[("partly", "fd"), ["mean_before_low", "mean_after_high"]].isna().all()
    assert s.loc[("mixed", "tvd"), ["mean_before_low", "mean_after_high"]].notna().all()


def test_overlapping_intervals_are_no_clear_change():
    a, b = _audit(["Male"] * 11 + ["Female"] * 9), _audit(["Male"] * 10 + ["Female"] * 10)
    table, _ = compare(a, {"same": b})
    assert (table.loc[table["metric"] != "fd", "verdict"] == "no clear change").all()


def test_summary_without_interval_columns_is_refused():
    base = _audit(["Male"] * 20)
    with pytest.raises(VlmbiasError, match="lacks column"):
        compare(base, {"old": (base[0].drop(columns=["tvd_low"]), base[1])})
