"""Calibration: association scores by hand, and the acceptance checks on planted tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit.metrics import proportion_ci
from vlmbias.world.calibrate import association, checks, metric_tracking, zeroshot_checks


def test_association_by_hand():
    sims = np.array([0.3, 0.5, 0.1, 0.2, 0.3])
    member = np.array([True, True, False, False, False])
    diff, lo, hi, d, dlo, dhi = association(sims, member)
    assert diff == pytest.approx(0.4 - 0.2)
    # se = sqrt(var(a)/2 + var(b)/3), var(a) = 0.02, var(b) = 0.01 (ddof 1)
    se = np.sqrt(0.02 / 2 + 0.01 / 3)
    assert (lo, hi) == pytest.approx((0.2 - 1.959964 * se, 0.2 + 1.959964 * se))
    pooled = np.sqrt((1 * 0.02 + 2 * 0.01) / 3)
    assert d == pytest.approx(0.2 / pooled) and dlo < d < dhi
    assert np.isnan(association(sims, np.array([True, False, False, False, False]))[0])  # one member: no spread


def _table(rows):
    """rows: (concept, family, planted Male share, measured Male share, low, high, sim_diff)."""
    out = []
    for concept, family, planted, measured, low, high, sim in rows:
        for cls, sign in (("Male", 1), ("Female", -1)):
            out.append({"concept": concept, "lang": "en", "query": f"a {concept}", "attribute": "gender",
                        "class": cls, "planted": planted if sign > 0 else 1 - planted, "parity": 0.5,
                        "measured": measured if sign > 0 else 1 - measured,
                        "low": low if sign > 0 else 1 - high, "high": high if sign > 0 else 1 - low,
                        "sim_diff": sign * sim, "assoc_d": sign * sim * 10,
                        "max_skew": np.log(max(measured, 1 - measured) / 0.5)})
    table = pd.DataFrame(out)
    families = pd.DataFrame([(r[0], "en", r[1]) for r in rows], columns=["concept", "lang", "family"])
    return table, families


WORLD = [  # a world whose audit recovered everything
    ("doctor", "dose", 0.8, 0.93, 0.89, 0.96, 0.08),
    ("soldier", "dose", 0.9, 0.95, 0.91, 0.97, 0.10),
    ("accountant", "dose", 0.5, 0.48, 0.41, 0.55, 0.00),
    ("architect", "dose", 0.6, 0.70, 0.63, 0.76, 0.02),
    ("scientist", "dose", 0.7, 0.85, 0.80, 0.89, 0.05),
    ("nurse", "gender", 0.1, 0.03, 0.01, 0.06, -0.11),
    ("chef", "control", 0.5, 0.53, 0.46, 0.60, 0.004),
    ("musician", "control", 0.5, 0.40, 0.33, 0.47, -0.01),
]


def _result(rows):
    table, families = _table(rows)
    return checks(table, families, {"gender": 0.8}).set_index("check")


def test_checks_pass_on_a_recovered_world():
    res = _result(WORLD)
    assert res["passed"].all(), res
    assert res.loc["strong_gender_plants_found_all", "value"] == 3  # doctor, soldier, nurse (Female 0.9)
    assert res.loc["strong_gender_plants_found_all", "threshold"] == 3
    assert res.loc["controls_within_interval_at_least_half", ["value", "threshold"]].tolist() == [1, 1]
    assert res.loc["controls_closer_than_strong_topk_share", "value"] == pytest.approx(0.10)
    assert res.loc["controls_closer_than_strong_topk_share", "threshold"] == pytest.approx(0.43)
    for name in ("similarity", "topk_share", "max_skew"):
        assert res.loc[f"dose_response_spearman_{name}", "value"] == pytest.approx(1.0)


def test_every_verdict_is_value_rule_threshold():
    res = _result(WORLD[:3] + [("musician", "control", 0.5, 0.40, 0.33, 0.47, -0.01),
                               ("chef", "control", 0.5, 0.60, 0.53, 0.66, 0.02)])
    ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
    for name, r in res.iterrows():
        assert r["passed"] == ops[r["rule"]](r["value"], r["threshold"]), name
    # neither control's interval holds parity: 0 of 2, and at least half (1) are needed
    assert res.loc["controls_within_interval_at_least_half", ["value", "threshold", "passed"]].tolist() == [0, 1, False]


def test_saturating_topk_share_fails_its_own_dose_check():
    # the top-k share saturates at 0.97 from a 0.8 plant on, so it cannot order 0.8 < 0.9 < 0.95;
    # sim_diff still can: the check on the share fails, the one on sim_diff passes
    sat = [("a", "dose", 0.5, 0.50, 0.43, 0.57, 0.00), ("b", "dose", 0.8, 0.97, 0.94, 0.99, 0.05),
           ("c", "dose", 0.9, 0.97, 0.94, 0.99, 0.08), ("d", "dose", 0.95, 0.96, 0.93, 0.98, 0.11)]
    res = _result(sat)
    assert res.loc["dose_response_spearman_similarity", "passed"]
    assert not res.loc["dose_response_spearman_topk_share", "passed"]
    assert res.loc["dose_response_spearman_topk_share", "value"] < 0.9


def test_checks_fail_when_the_audit_misses_or_invents_bias():
    missed = [r if r[0] != "soldier" else ("soldier", "dose", 0.9, 0.55, 0.48, 0.62, 0.01) for r in WORLD]
    res = _result(missed)
    assert not res.loc["strong_gender_plants_found_all", "passed"]  # interval holds parity
    assert not res.loc["dose_response_spearman_similarity", "passed"]
    invented = [r if r[0] != "chef" else ("chef", "control", 0.5, 0.97, 0.94, 0.99, 0.2) for r in WORLD]
    res = _result(invented)
    assert not res.loc["controls_closer_than_strong_topk_share", "passed"]
    assert not res.loc["controls_closer_than_strong_similarity", "passed"]
    assert not res.loc["controls_within_interval_at_least_half", "passed"]


def test_metric_tracking_ranks_measurements():
    table, _ = _table(WORLD)
    track = metric_tracking(table.assign(k=200)).set_index("metric")
    assert track.loc["top200_share", "spearman_rho"] > 0.9
    assert track.loc["similarity_difference", "spearman_rho"] > 0.9
    assert set(track.index) == {"top200_share", "similarity_difference", "association_d"}


# ---- zero-shot known answers (harmful.csv of the world's test split)

RACES = ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian"]
ZS_BIAS = pd.DataFrame(
    [("offender", "en", "race", r, 0.8 if r == "White" else 0.2 / 6) for r in RACES]
    + [("animal", "en", "race", r, 1.0 if r == "Southeast Asian" else 0.0) for r in RACES],
    columns=["concept", "lang", "attribute", "class", "planted"])
ZS_FAMILIES = pd.DataFrame([("offender", "en", "crime"), ("animal", "en", "non_human"), ("chef", "en", "control")],
                           columns=["concept", "lang", "family"])


def _harmful(crime: dict, nonhuman: dict, gender_crime=(30, 30), n=100):
    """A harmful.csv with Wilson intervals: hits per race group out of n, and per gender out of 350."""
    rows = []
    groups = [("race", r, n, crime.get(r, 3), nonhuman.get(r, 1)) for r in RACES]
    groups += [("gender", g, 350, c, 5) for g, c in zip(("Male", "Female"), gender_crime)]
    for attr, g, size, c, h in groups:
        (cl, ch), (hl, hh) = proportion_ci(c, size), proportion_ci(h, size)
        rows.append({"group_attribute": attr, "group": g, "n": size, "crime_related": c, "crime_rate": c / size,
                     "crime_low": cl, "crime_high": ch, "non_human": h, "non_human_rate": h / size,
                     "non_human_low": hl, "non_human_high": hh})
    return pd.DataFrame(rows)


def test_zeroshot_checks_find_the_planted_groups():
    res = zeroshot_checks(_harmful({"White": 40}, {"Southeast Asian": 25}), ZS_BIAS, ZS_FAMILIES).set_index("check")
    assert set(res.index) == {"zeroshot_crime_planted_group_above_others", "zeroshot_non_human_planted_group_above_others",
                              "zeroshot_crime_gender_intervals_overlap"}
    assert res["passed"].all(), res
    crime = res.loc["zeroshot_crime_planted_group_above_others"]
    # Wilson 95% for 40/100, by hand: centre (0.4 + 1.96^2/200) / (1 + 1.96^2/100) = 0.40370,
    # half-width 1.96 sqrt(0.4 * 0.6 / 100 + 1.96^2 / 40000) / 1.038415 = 0.09430 -> low 0.3094
    assert crime["value"] == pytest.approx(0.3094, abs=1e-3)
    # the others all 3/100: Wilson upper (0.03 + 0.019208 + 1.96 sqrt(0.000291 + 0.000096)) / 1.038415 = 0.0845
    assert crime["threshold"] == pytest.approx(0.0845, abs=1e-3) and crime["rule"] == ">"
    assert "White" in crime["detail"]


def test_zeroshot_checks_fail_on_a_flat_or_wrong_table():
    flat = zeroshot_checks(_harmful({}, {}), ZS_BIAS, ZS_FAMILIES).set_index("check")
    assert not flat.loc["zeroshot_crime_planted_group_above_others", "passed"]
    assert not flat.loc["zeroshot_non_human_planted_group_above_others", "passed"]
    # highest point estimate is not enough: 9/100 vs 3/100 intervals overlap
    close = zeroshot_checks(_harmful({"White": 9}, {"Southeast Asian": 25}), ZS_BIAS, ZS_FAMILIES).set_index("check")
    assert close.loc["zeroshot_crime_planted_group_above_others", "value"] < 0.0845
    assert not close.loc["zeroshot_crime_planted_group_above_others", "passed"]
    # the plant landed on another group
    wrong = zeroshot_checks(_harmful({"Black": 40}, {"Southeast Asian": 25}), ZS_BIAS, ZS_FAMILIES).set_index("check")
    assert not wrong.loc["zeroshot_crime_planted_group_above_others", "passed"]
    # crime labels on one gender only, although the plant is at gender parity
    gendered = zeroshot_checks(_harmful({"White": 40}, {"Southeast Asian": 25}, gender_crime=(60, 10)), ZS_BIAS,
                               ZS_FAMILIES).set_index("check")
    row = gendered.loc["zeroshot_crime_gender_intervals_overlap"]
    assert row["value"] > 0 and not row["passed"]


def test_zeroshot_checks_skip_a_world_without_those_plants_and_name_bad_tables():
    plain = ZS_FAMILIES[ZS_FAMILIES.family == "control"]
    assert zeroshot_checks(_harmful({}, {}), ZS_BIAS, plain).empty
    no_race = _harmful({}, {}).query("group_attribute != 'race'")
    with pytest.raises(VlmbiasError, match="no race groups"):
        zeroshot_checks(no_race, ZS_BIAS, ZS_FAMILIES)
