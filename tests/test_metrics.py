"""Metrics: thesis tables 4.1/4.3, hand-computed Skew/NDKL, intervals, tests and the table builder."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vlmbias.audit import metrics as m

G = ["Male", "Female"]
# Thesis Table 4.1: gender counts among the top 20 of each query (Male, Female).
TABLE_4_1 = {
    "a construction worker": (19, 1), "a doctor": (17, 3), "a domestic worker": (2, 18), "a nurse": (2, 18),
    "a police officer": (18, 2), "a scientist": (15, 5), "a software engineer": (20, 0), "a teacher": (10, 10),
}
# Thesis Table 4.3: RD (%) of (Male, Female).
TABLE_4_3 = {
    "a construction worker": (79.67, -89.39), "a doctor": (60.75, -68.17), "a domestic worker": (-81.09, 90.98),
    "a nurse": (-81.09, 90.98), "a police officer": (70.21, -78.78), "a scientist": (41.84, -46.95),
    "a software engineer": (89.12, -100.0), "a teacher": (-5.44, 6.10),
}


def counts(*c, classes=G):
    return pd.Series(c, index=classes)


# ---------------------------------------------------------------- Representation Disparity

@pytest.mark.parametrize("query", list(TABLE_4_1))
def test_rd_reproduces_thesis_table_4_3_from_fairface_val_counts(query):
    # FairFace val: 5792 Male, 5162 Female (52.88% / 47.12%); counts are normalised, so pass them as is
    rd = m.representation_disparity(counts(*TABLE_4_1[query]), {"Male": 5792, "Female": 5162})
    assert rd.round(2).tolist() == list(TABLE_4_3[query])


def test_rd_with_rounded_percentages():
    props = {"Male": 52.88, "Female": 47.12}
    # values the thesis prints exactly even from the rounded percentages
    assert m.representation_disparity(counts(19, 1), props)["Female"].round(2) == -89.39  # construction worker
    assert m.representation_disparity(counts(17, 3), props)["Female"].round(2) == -68.17  # doctor
    assert m.representation_disparity(counts(2, 18), props)["Male"].round(2) == -81.09   # domestic worker, nurse
    assert m.representation_disparity(counts(18, 2), props)["Female"].round(2) == -78.78  # police officer
    assert m.representation_disparity(counts(20, 0), props)["Female"] == -100.0           # software engineer
    # (95 - 52.88) / 52.88 * 100 = 79.652: within rounding of the percentage of the thesis' 79.67
    assert m.representation_disparity(counts(19, 1), props)["Male"] == pytest.approx((95 - 52.88) / 52.88 * 100)
    for q, (mc, fc) in TABLE_4_1.items():
        rd = m.representation_disparity(counts(mc, fc), props)
        assert np.allclose(rd.to_numpy(), TABLE_4_3[q], atol=0.03)


def test_rd_nan_for_class_absent_from_dataset():
    rd = m.representation_disparity(counts(1, 1, 0, classes=["a", "b", "c"]), {"a": 1, "b": 1})
    assert rd["a"] == 0.0 and rd["b"] == 0.0 and np.isnan(rd["c"])


# ---------------------------------------------------------------- Fairness Disparity

def test_fd_thesis_zero_handling_and_strict():
    assert m.fairness_disparity(counts(19, 1)) == 19.0
    assert m.fairness_disparity(counts(15, 5)) == 3.0
    assert m.fairness_disparity(counts(10, 10)) == 1.0
    # a class with zero retrieved images: the thesis ignores it in the minimum
    assert m.fairness_disparity([12, 0, 4, 4]) == 3.0
    assert m.fairness_disparity([12, 0, 4, 4], strict=True) == math.inf
    # only one class present ("a software engineer", 20 Male): max/max = 1, strict = inf
    assert m.fairness_disparity(counts(20, 0)) == 1.0
    assert m.fairness_disparity(counts(20, 0), strict=True) == math.inf
    # no non-zero minimum at all: the thesis fallback returns the max count itself
    assert m.fairness_disparity([0, 0, 0]) == 0.0
    assert m.fairness_disparity([0, 0, 0], strict=True) == math.inf
    assert m.fairness_disparity([15, 5], strict=True) == 3.0


def test_fd_k1_and_single_class():
    c = m.class_counts(["Male"], G)
    assert c.tolist() == [1, 0] and c.index.tolist() == G
    assert m.fairness_disparity(c) == 1.0 and m.fairness_disparity(c, strict=True) == math.inf
    single = m.class_counts(["x", "x", "x"], ["x"])
    assert m.fairness_disparity(single) == 1.0 and m.fairness_disparity(single, strict=True) == 1.0


def test_class_counts_keeps_zero_classes_drops_nulls_rejects_unknown():
    c = m.class_counts(["b", None, "b", "a"], ["a", "b", "c"])
    assert c.tolist() == [1, 2, 0] and c.dtype.kind == "i"
    with pytest.raises(ValueError, match="not among classes"):
        m.class_counts(["a", "z"], ["a", "b"])


# ---------------------------------------------------------------- Skew and NDKL

def test_skew_hand_computed():
    c = m.class_counts(["A", "A", "B"], ["A", "B", "C"])          # 2, 1, 0 of 3; uniform target 1/3
    exact = m.skew(c, m.uniform_target(["A", "B", "C"]), eps=0)
    assert exact["A"] == pytest.approx(math.log(2)) and exact["B"] == pytest.approx(0) and exact["C"] == -math.inf
    # default, the published convention: raw shares (2/3, 1/3), the absent C counted as 1/k = 1/3
    pub = m.skew(c, m.uniform_target(["A", "B", "C"]))
    assert pub.tolist() == pytest.approx([math.log(2), 0.0, 0.0])
    assert m.max_skew(c, m.uniform_target(["A", "B", "C"])) == pytest.approx(math.log(2))
    assert m.min_skew(c, m.uniform_target(["A", "B", "C"])) == pytest.approx(0.0)
    # the example: 15 of 20 Male against uniform, published 0.4055, smoothed 0.3895
    assert m.max_skew(counts(15, 5), m.uniform_target(["Male", "Female"])) == pytest.approx(math.log(1.5))
    assert m.max_skew(counts(15, 5), m.uniform_target(["Male", "Female"]), eps=0.5) == pytest.approx(
        math.log(15.5 / 21 / 0.5))
    # explicit pseudo-count 0.5 -> (2.5, 1.5, 0.5) / 4.5 = (5/9, 1/3, 1/9)
    sm = m.skew(c, m.uniform_target(["A", "B", "C"]), eps=0.5)
    assert sm.tolist() == pytest.approx([math.log(5 / 3), 0.0, math.log(1 / 3)])
    assert m.min_skew(c, m.uniform_target(["A", "B", "C"]), eps=0.5) == pytest.approx(-math.log(3))
    # non-uniform target, dict with a missing class -> NaN for it, ignored by MaxSkew
    s = m.skew(counts(3, 1, classes=["A", "B"]), {"A": 0.5}, eps=0)
    assert s["A"] == pytest.approx(math.log(0.75)) and np.isnan(s["B"])
    assert m.max_skew(counts(3, 1, classes=["A", "B"]), {"A": 0.5}, eps=0) == pytest.approx(math.log(0.75))


def _published_skews(labels, dataset_labels, top_n):
    """MaxSkew/MinSkew@top_n as Geyik et al. define them and Berg et al.'s code computes them,
    written from the formula: every class of the dataset, share = count / top_n, a class absent
    from the top n counted as 1/top_n, targets uniform ('equal opportunity') and the dataset's
    shares ('demographic parity'); MaxSkew starts at 0."""
    present = sorted(set(dataset_labels))
    top = labels[:top_n]
    out = {"max_uniform": 0.0, "max_dataset": 0.0, "min_uniform": math.inf, "min_dataset": math.inf}
    for c in present:
        share = top.count(c) / top_n or 1 / top_n
        for name, target in (("uniform", 1 / len(present)), ("dataset", dataset_labels.count(c) / len(dataset_labels))):
            sk = math.log(share) - math.log(target)
            out[f"max_{name}"] = max(out[f"max_{name}"], sk)
            out[f"min_{name}"] = min(out[f"min_{name}"], sk)
    return out


def _published_ndkl(labels, dataset_labels, top_n):
    """NDKL@top_n from its definition: sum_i KL(top-i || target) / log2(i + 1), divided by Z."""
    present = sorted(set(dataset_labels))
    targets = {"uniform": [1 / len(present)] * len(present),
               "dataset": [dataset_labels.count(c) / len(dataset_labels) for c in present]}
    out = {}
    for name, q in targets.items():
        total, counts_ = 0.0, dict.fromkeys(present, 0)
        for i, lab in enumerate(labels[:top_n], start=1):
            counts_[lab] += 1
            kl = sum(counts_[c] / i * (math.log(counts_[c] / i) - math.log(qc))
                     for c, qc in zip(present, q) if counts_[c])
            total += kl / math.log2(i + 1)
        out[name] = total / sum(1 / math.log2(i + 1) for i in range(1, top_n + 1))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_defaults_equal_the_published_formulas(seed):
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    dataset = list(rng.choice(classes, size=400, p=[0.4, 0.3, 0.2, 0.1]))
    # seeds 0-2: skewed rankings where some classes are absent from the top k; 3-5: mixed
    p = [0.9, 0.1, 0.0, 0.0] if seed < 3 else [0.25, 0.25, 0.25, 0.25]
    ranking = list(rng.choice(classes, size=50, p=p))
    dataset_props = m.class_counts(dataset, classes)
    for k in (1, 7, 20, 50):
        c = m.class_counts(ranking[:k], classes)
        want, want_ndkl = _published_skews(ranking, dataset, k), _published_ndkl(ranking, dataset, k)
        u = m.uniform_target(classes)
        assert m.max_skew(c, u) == pytest.approx(want["max_uniform"], abs=1e-9)
        assert m.min_skew(c, u) == pytest.approx(want["min_uniform"], abs=1e-9)
        assert m.max_skew(c, dataset_props) == pytest.approx(want["max_dataset"], abs=1e-9)
        assert m.min_skew(c, dataset_props) == pytest.approx(want["min_dataset"], abs=1e-9)
        assert m.ndkl(ranking[:k], classes, u) == pytest.approx(want_ndkl["uniform"], abs=1e-9)
        assert m.ndkl(ranking[:k], classes, dataset_props) == pytest.approx(want_ndkl["dataset"], abs=1e-9)


def test_ndkl_hand_computed():
    # A, A, B vs uniform over {A, B}: prefix KLs ln2, ln2, 2/3 ln(4/3) + 1/3 ln(2/3); weights 1, 1/log2(3), 1/2
    kl = [math.log(2), math.log(2), 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)]
    w = [1, 1 / math.log2(3), 0.5]
    expected = sum(a * b for a, b in zip(kl, w)) / sum(w)
    value = m.ndkl(["A", "A", "B"], ["A", "B"], m.uniform_target(["A", "B"]))
    assert value == pytest.approx(expected) and value == pytest.approx(0.54380, abs=1e-4)
    # non-uniform target, k = 1: KL((1, 0) || (0.25, 0.75)) = ln 4
    assert m.ndkl(["A"], ["A", "B"], {"A": 0.25, "B": 0.75}) == pytest.approx(math.log(4))


def test_ndkl_alternating_beats_sorted():
    u = m.uniform_target(["A", "B"])
    alternating = m.ndkl(list("ABABABAB"), ["A", "B"], u)
    blocks = m.ndkl(list("AAAABBBB"), ["A", "B"], u)
    assert 0 < alternating < blocks
    assert m.ndkl(list("AAAA"), ["A", "B"], u) == pytest.approx(math.log(2))  # every prefix KL = ln 2


# ---------------------------------------------------------------- intervals and tests

def test_wilson_known_value_and_vectorised():
    low, high = m.proportion_ci(19, 20)
    assert (round(low, 4), round(high, 4)) == (0.7639, 0.9911)
    ci = stats.binomtest(19, 20).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    lo, hi = m.proportion_ci(np.array([0, 10, 20, 0]), np.array([20, 20, 20, 0]))
    assert lo[0] == 0 and hi[2] == pytest.approx(1) and lo[1] < 0.5 < hi[1] and np.isnan(lo[3])


def test_clopper_pearson_matches_scipy():
    for x, n in [(0, 20), (3, 20), (19, 20), (20, 20), (45, 200)]:
        ci = stats.binomtest(x, n).proportion_ci(0.95, method="exact")
        assert m.proportion_ci(x, n, method="clopper-pearson") == pytest.approx((ci.low, ci.high))
    with pytest.raises(ValueError):
        m.proportion_ci(1, 2, method="agresti")


def test_bootstrap_ci_seeded_and_contains_estimate():
    labels = ["A"] * 15 + ["B"] * 5
    fd = lambda c: m.fairness_disparity(c)  # noqa: E731
    a = m.bootstrap_ci(labels, ["A", "B"], fd, n_boot=500, seed=3)
    b = m.bootstrap_ci(labels, ["A", "B"], fd, n_boot=500, seed=3)
    assert a == b and a[0] <= 3.0 <= a[1] and a[0] < a[1]
    vec = m.bootstrap_ci(labels, ["A", "B"], lambda c: m._fd(c, False), n_boot=500, seed=3, vectorized=True)
    assert vec == pytest.approx(a)
    # a vector statistic gives per-class intervals
    lo, hi = m.bootstrap_ci(labels, ["A", "B"], lambda c: c / c.sum(), n_boot=500, seed=1)
    assert lo[0] <= 0.75 <= hi[0] and lo[1] <= 0.25 <= hi[1]


def test_goodness_of_fit():
    chi2, p = m.goodness_of_fit(counts(10, 10), {"Male": 0.5, "Female": 0.5}, n_sim=2000)
    assert chi2 == 0 and p == pytest.approx(1.0)
    chi2, p = m.goodness_of_fit(counts(20, 0), {"Male": 0.5, "Female": 0.5}, n_sim=5000)
    assert chi2 == pytest.approx(20.0) and p < 0.001
    assert m.goodness_of_fit(counts(20, 0), {"Male": 0.5, "Female": 0.5}) == m.goodness_of_fit(
        counts(20, 0), {"Male": 0.5, "Female": 0.5})
    assert m.goodness_of_fit([1, 1], [0, 1]) == (math.inf, 0.0)


def test_match_rate_and_confusion_matrix():
    rate, lo, hi = m.match_rate(["Black"] * 19 + ["White"], "Black")
    assert rate == 0.95 and (round(lo, 4), round(hi, 4)) == (0.7639, 0.9911)
    cls = ["Black", "White", "Indian"]
    cm = m.confusion_matrix(["Black", "Black", "White", "White"], ["Black", "White", "White", "White"], cls)
    assert cm.index.tolist() == cls and cm.columns.tolist() == cls
    assert cm.loc["Black"].tolist() == [1, 1, 0] and cm.loc["White"].tolist() == [0, 2, 0]
    assert cm.loc["Indian"].sum() == 0


# ---------------------------------------------------------------- audit_tables

DOC_CLASSES = ("model, dataset, query_set, query_id, query, k, n, attribute, class, count, proportion, "
               "proportion_low, proportion_high, dataset_proportion, rd, rd_low, rd_high, skew_uniform, skew_dataset, "
               "skew_convention, interval_method, interval_undercovers, flags").split(", ")
DOC_SUMMARY = ("model, dataset, query_set, query_id, query, k, n, attribute, fd, fd_low, fd_high, fd_strict, "
               "tvd, tvd_low, tvd_high, "
               "max_skew_uniform, max_skew_uniform_low, max_skew_uniform_high, min_skew_uniform, "
               "max_skew_dataset, max_skew_dataset_low, max_skew_dataset_high, min_skew_dataset, "
               "ndkl_uniform, ndkl_uniform_low, ndkl_uniform_high, ndkl_dataset, ndkl_dataset_low, ndkl_dataset_high, "
               "kl_dataset, chi2, p_value, p_adjusted, skew_test, named_class, match_rate, match_low, match_high, "
               "skew_convention, interval_method, interval_undercovers, flags").split(", ")


def test_documented_columns_match_docs():
    doc = (Path(__file__).parents[1] / "docs" / "artifacts.md").read_text()
    assert ", ".join(DOC_CLASSES[5:]) in " ".join(doc.split()) and ", ".join(DOC_SUMMARY[5:]) in " ".join(doc.split())


@pytest.fixture
def tables():
    doctor = pd.DataFrame({"query_id": "q0", "query": "a doctor", "rank": [1, 2, 3, 4],
                           "gender": ["Male", "Male", "Female", "Male"], "race": ["White", "Black", "White", "White"],
                           "names_attribute": None, "names_class": None})
    person = pd.DataFrame({"query_id": "q1", "query": "a Black person", "rank": [1, 2, 3],  # only 3 rows
                           "gender": ["Female", "Male", "Female"], "race": ["Black", "Black", "White"],
                           "names_attribute": "race", "names_class": "Black"})
    r = pd.concat([doctor, person], ignore_index=True).assign(model="m", dataset="d", query_set="s")
    r["image_id"] = [f"img{i}" for i in range(len(r))]
    r["score"] = 0.5
    r = r.sample(frac=1.0, random_state=0)  # row order must not matter, rank does
    dist = pd.DataFrame({"attribute": ["gender", "gender", "race", "race", "race"],
                         "class": ["Male", "Female", "Black", "White", "Indian"],
                         "count": [6, 4, 5, 5, 0], "percent": [60.0, 40.0, 50.0, 50.0, 0.0]})
    return r, dist


def test_audit_tables_cells_and_columns(tables):
    r, dist = tables
    cl, sm = m.audit_tables(r, dist, [2, 4], n_boot=200, seed=0)
    assert cl.columns.tolist() == DOC_CLASSES
    assert sm.columns.tolist() == DOC_SUMMARY
    assert set(sm["skew_convention"]) == {"published"} and set(sm["interval_method"]) == {m.INTERVAL_METHOD}
    assert len(sm) == 2 * 2 * 2 and len(cl) == 2 * 2 * (2 + 3)

    c = cl.set_index(["query", "k", "attribute", "class"])
    s = sm.set_index(["query", "k", "attribute"])
    # doctor, k=4: 3 Male 1 Female vs 60/40
    assert c.loc[("a doctor", 4, "gender", "Male"), "count"] == 3
    assert c.loc[("a doctor", 4, "gender", "Male"), "proportion"] == 0.75
    assert c.loc[("a doctor", 4, "gender", "Male"), "rd"] == pytest.approx(25.0)
    assert c.loc[("a doctor", 4, "gender", "Female"), "rd"] == pytest.approx(-37.5)
    assert c.loc[("a doctor", 4, "gender", "Male"), "dataset_proportion"] == pytest.approx(0.6)
    assert s.loc[("a doctor", 4, "gender"), ["n", "fd", "fd_strict"]].tolist() == [4, 3.0, 3.0]
    assert s.loc[("a doctor", 4, "gender"), "tvd"] == pytest.approx(0.15)  # |0.75 - 0.6|
    # doctor, k=2 uses ranks 1-2 only: two Male
    assert s.loc[("a doctor", 2, "gender"), ["fd", "fd_strict"]].tolist() == [1.0, math.inf]
    assert c.loc[("a doctor", 2, "race", "Black"), "count"] == 1
    # class absent from the dataset: proportion 0; RD and Skew undefined (the uniform target, as in
    # Berg et al.'s code, spreads over the classes the dataset has: 1/2 each for Black and White)
    indian = c.loc[("a doctor", 4, "race", "Indian")]
    assert indian["count"] == 0 and indian["dataset_proportion"] == 0
    assert np.isnan(indian["rd"]) and np.isnan(indian["skew_dataset"]) and np.isnan(indian["skew_uniform"])
    black = c.loc[("a doctor", 4, "race", "Black")]
    assert black["skew_uniform"] == pytest.approx(math.log(black["proportion"] / 0.5))
    # k larger than the ranking: all 3 rows, proportions over n = 3
    assert s.loc[("a Black person", 4, "race"), "n"] == 3
    assert c.loc[("a Black person", 4, "race", "Black"), "proportion"] == pytest.approx(2 / 3)
    totals = cl.groupby(["query", "k", "attribute"])["count"].sum()
    assert (totals == s["n"].reindex(totals.index)).all()
    # named group: race row carries the match rate, gender row does not
    row = s.loc[("a Black person", 4, "race")]
    assert row["named_class"] == "Black" and row["match_rate"] == pytest.approx(2 / 3)
    assert (row["match_low"], row["match_high"]) == pytest.approx(m.proportion_ci(2, 3))
    assert pd.isna(s.loc[("a Black person", 4, "gender"), "named_class"])
    assert s["named_class"].isna().sum() == 6
    # every interval holds its point estimate; proportion interval by the chosen method
    for metric in ("fd", "tvd", "max_skew_uniform", "max_skew_dataset", "ndkl_uniform", "ndkl_dataset"):
        assert sm[metric].between(sm[f"{metric}_low"], sm[f"{metric}_high"]).all(), metric
    assert cl["rd"].between(cl["rd_low"], cl["rd_high"]).all() or cl["rd"].isna().any()
    assert (cl["proportion_low"] <= cl["proportion"]).all() and (cl["proportion"] <= cl["proportion_high"]).all()
    assert sm["ndkl_dataset"].between(sm["ndkl_dataset_low"] - 1e-12, sm["ndkl_dataset_high"] + 1e-12).all()
    assert s.loc[("a doctor", 4, "gender"), "ndkl_dataset"] == pytest.approx(
        m.ndkl(["Male", "Male", "Female", "Male"], G, {"Male": 0.6, "Female": 0.4}))
    # seeded: identical twice
    cl2, sm2 = m.audit_tables(r, dist, [2, 4], n_boot=200, seed=0)
    pd.testing.assert_frame_equal(sm, sm2)
    pd.testing.assert_frame_equal(cl, cl2)


def test_top_k_is_the_first_k_ranks_and_blank_labels_are_unlabelled():
    # ranks 2 and 4 unlabelled (null, blank): top 4 holds n = 2 labelled items, never reaching rank 5
    r = pd.DataFrame({"model": "m", "dataset": "d", "query_set": "s", "query_id": "q", "query": "a doctor",
                      "rank": [1, 2, 3, 4, 5, 6], "gender": ["Male", None, "Female", " ", "Male", "Male"]})
    dist = pd.DataFrame({"attribute": "gender", "class": ["Male", "Female"], "count": [5, 5], "percent": [50.0, 50.0]})
    cl, sm = m.audit_tables(r, dist, [4, 6], n_boot=50)
    s = sm.set_index("k")
    assert s.loc[4, "n"] == 2 and s.loc[6, "n"] == 4
    c = cl.set_index(["k", "class"])
    assert c.loc[(4, "Male"), ["count", "proportion", "n"]].tolist() == [1, 0.5, 2]
    assert s.loc[4, "max_skew_uniform"] == pytest.approx(0.0)
    assert s.loc[6, "max_skew_uniform"] == pytest.approx(math.log(0.75 / 0.5))
    assert m.class_counts(["a", "", "  ", None, "b"], ["a", "b"]).tolist() == [1, 1]


def test_percentile_interval_can_miss_its_estimate_normal_cannot():
    # 12 rows in rank order, strongly front-loaded: resampling (sorted) scrambles the prefixes, so the
    # NDKL of most resamples lies above the estimate; the percentile interval misses it
    r = pd.DataFrame({"model": "m", "dataset": "d", "query_set": "s", "query_id": "q", "query": "x",
                      "rank": range(1, 13), "gender": ["Male", "Female"] * 6})
    dist = pd.DataFrame({"attribute": "gender", "class": ["Male", "Female"], "count": [5, 5], "percent": [50.0, 50.0]})
    _, pct = m.audit_tables(r, dist, [12], n_boot=400, interval="bootstrap-percentile")
    _, nrm = m.audit_tables(r, dist, [12], n_boot=400, interval="bootstrap-normal")
    est = pct["ndkl_uniform"].iloc[0]
    assert est < pct["ndkl_uniform_low"].iloc[0]
    assert nrm["ndkl_uniform_low"].iloc[0] <= est <= nrm["ndkl_uniform_high"].iloc[0]
    assert nrm["ndkl_uniform_low"].iloc[0] == 0.0  # clipped at the metric's floor
    # a balanced top 12 has MaxSkew 0, and its interval never reaches below the metric's floor 0
    assert nrm["max_skew_uniform"].iloc[0] == 0.0 and nrm["max_skew_uniform_high"].iloc[0] > 0
    assert nrm["max_skew_uniform_low"].iloc[0] == 0.0 and nrm["max_skew_dataset_low"].iloc[0] == 0.0


def test_audit_tables_k1_attribute_choice_and_ci_method(tables):
    r, dist = tables
    cl, sm = m.audit_tables(r.drop(columns=["names_attribute", "names_class"]), dist, [1], attributes=["gender"],
                            n_boot=100, ci_method="clopper-pearson")
    assert set(sm["attribute"]) == {"gender"} and (sm["n"] == 1).all() and (sm["fd"] == 1.0).all()
    assert sm["named_class"].isna().all()
    one = cl[(cl["query"] == "a doctor") & (cl["class"] == "Male")].iloc[0]
    assert (one["proportion_low"], one["proportion_high"]) == pytest.approx(m.proportion_ci(1, 1, method="exact"))


def test_audit_tables_errors(tables):
    r, dist = tables
    with pytest.raises(ValueError, match="query_id"):
        m.audit_tables(r.drop(columns=["query_id"]), dist, [2])
    with pytest.raises(ValueError, match="attribute column"):
        m.audit_tables(r.drop(columns=["race"]), dist, [2])
    with pytest.raises(ValueError, match="empty"):
        m.audit_tables(r.iloc[0:0], dist, [2])
    with pytest.raises(ValueError, match="k must be at least 1"):
        m.audit_tables(r, dist, [0, 2])
    with pytest.raises(ValueError, match="absent from the dataset distribution"):
        m.audit_tables(r, dist, [2], attributes=["age"])
    with pytest.raises(ValueError, match="distribution table lacks"):
        m.audit_tables(r, dist.drop(columns=["percent"]), [2])


def test_cli_writes_both_tables(tables, tmp_path):
    r, dist = tables
    r.to_parquet(tmp_path / "r.parquet")
    dist.to_csv(tmp_path / "dist.csv", index=False)
    m.main(["--rankings", str(tmp_path / "r.parquet"), "--distribution", str(tmp_path / "dist.csv"),
            "--k", "2", "4", "--n-boot", "100", "--attributes", "--out-classes", str(tmp_path / "c.csv"),
            "--out-summary", str(tmp_path / "s.csv")])
    s = pd.read_csv(tmp_path / "s.csv")
    assert set(s["k"]) == {2, 4} and set(s["attribute"]) == {"gender", "race"}
    assert pd.read_csv(tmp_path / "c.csv").columns.tolist() == DOC_CLASSES


def test_confusion_table_of_group_naming_queries():
    # "a Black person" names race=Black (3 rows), "a White person" names White (2 rows), "a doctor" none
    r = pd.DataFrame({
        "model": "m", "dataset": "d", "query_set": "s",
        "query_id": ["b"] * 3 + ["w"] * 2 + ["d"] * 2, "query": ["a Black person"] * 3 + ["a White person"] * 2 + ["a doctor"] * 2,
        "rank": [1, 2, 3, 1, 2, 1, 2], "race": ["Black", "White", "Black", "White", "", "Black", "Black"],
        "names_attribute": ["race"] * 5 + [None] * 2, "names_class": ["Black"] * 3 + ["White"] * 2 + [None] * 2})
    dist = pd.DataFrame({"attribute": "race", "class": ["Black", "White", "Indian"], "count": [1, 1, 1],
                         "percent": [1 / 3] * 3})
    t = m.confusion_table(r, dist, [2, 3]).set_index(["k", "named_class", "retrieved_class"])
    assert t.loc[(3, "Black", "Black"), "count"] == 2 and t.loc[(3, "Black", "White"), "count"] == 1
    assert t.loc[(3, "Black", "Black"), "share"] == pytest.approx(2 / 3)
    assert t.loc[(3, "White", "White"), "count"] == 1 and t.loc[(3, "White", "White"), "share"] == 1.0  # blank skipped
    assert t.loc[(2, "Black", "Black"), "count"] == 1  # first 2 ranks only
    assert "Indian" not in t.index.get_level_values("named_class")  # no query names it
    assert m.confusion_table(r.drop(columns=["names_attribute", "names_class"]), dist, [2]).empty


def test_rows_mark_the_intervals_whose_measured_coverage_falls_short():
    # from the shipped simulation (benchmarks/coverage.py): 2 classes, k = 20, 95% one class -> the
    # bootstrap intervals under-cover; 7 classes at parity, k = 200 -> the plain Dirichlet TVD and
    # MaxSkew intervals miss 0 (about 0.7), the default's hold it
    short = m.undercovering(2, 20, 0.95, "bootstrap-normal").split(";")
    assert {"ndkl_dataset", "max_skew_uniform", "tvd", "fd"} <= set(short)
    assert {"tvd", "max_skew_uniform"} <= set(m.undercovering(7, 200, 0.15, "dirichlet").split(";"))
    assert not {"tvd", "max_skew_uniform"} & set(m.undercovering(7, 200, 0.15).split(";"))
    assert m.undercovering(2, 20, 0.95, "bootstrap-percentile") == "not measured"
    cov = pd.read_csv(m.COVERAGE_TABLE)
    for method, classes, k, share, top in (("bootstrap-normal", 7, 20, 0.5, 0.52), ("dirichlet", 7, 20, 0.5, 0.52),
                                           (m.INTERVAL_METHOD, 7, 100, 0.3, 0.31), (m.INTERVAL_METHOD, 9, 1000, 0.8, 0.75)):
        cell = cov[(cov.interval_method == method) & (cov.classes == classes) & (cov.k == k)
                   & np.isclose(cov.share, share)].set_index("metric")["coverage"]
        assert len(cell) and set(filter(None, m.undercovering(classes, k, top, method).split(";"))) == set(
            cell[cell < 0.93].index)
    _, sm = m.audit_tables(_ranking(["Male"] * 19 + ["Female"]), GENDER_DIST, [20], n_boot=200)
    assert sm["interval_undercovers"].iloc[0] == m.undercovering(2, 20, 0.95)


# ---------------------------------------------------------------- interval method `dirichlet`

def _ranking(labels):
    return pd.DataFrame({"model": "m", "dataset": "d", "query_set": "s", "query_id": "q", "query": "x",
                         "rank": range(1, len(labels) + 1), "gender": labels})


GENDER_DIST = pd.DataFrame({"attribute": "gender", "class": ["Male", "Female"], "count": [5, 5], "percent": [50.0] * 2})


def test_posterior_shares_are_dirichlet_counts_plus_a_jeffreys_half():
    # 15 Male, 5 Female, two classes: the Male share's posterior is Beta(15.5, 5.5), mean 31/42
    draws = m.posterior_shares([15, 5], [True, True], 40_000, seed=1)
    assert m.prior(2) == 0.5 and m.prior(7) == pytest.approx(1 / 7)
    np.testing.assert_allclose(draws.sum(1), 1.0)
    assert draws[:, 0].mean() == pytest.approx(31 / 42, abs=0.002)
    np.testing.assert_allclose(np.quantile(draws[:, 0], [0.025, 0.975]), stats.beta.ppf([0.025, 0.975], 15.5, 5.5),
                               atol=0.004)
    # a class the dataset lacks never gets a share; seeded
    other = m.posterior_shares([3, 0, 2], [True, False, True], 100, seed=2)
    assert (other[:, 1] == 0).all()
    np.testing.assert_array_equal(other, m.posterior_shares([3, 0, 2], [True, False, True], 100, seed=2))
    codes = m.posterior_codes(np.array([[1.0, 0.0], [0.0, 1.0]]), 5, seed=0)
    assert codes.tolist() == [[0] * 5, [1] * 5]


def test_dirichlet_interval_by_hand():
    # 18 of 20 Male, balanced dataset: the Male share's posterior is Beta(18.5, 2.5); RD, TVD and
    # MaxSkew are monotone in it (it lies above 1/2 but for ~1e-4 of its mass), so their 95%
    # intervals are its quantiles mapped through them
    lo, hi = stats.beta.ppf([0.025, 0.975], 18.5, 2.5)
    cl, sm = m.audit_tables(_ranking(["Male"] * 18 + ["Female"] * 2), GENDER_DIST, [20], n_boot=40_000,
                            interval="dirichlet")
    s, male = sm.iloc[0], cl.set_index("class").loc["Male"]
    assert s["interval_method"] == "dirichlet"
    assert (s["tvd_low"], s["tvd_high"]) == pytest.approx((lo - 0.5, hi - 0.5), abs=0.004)
    assert (s["max_skew_uniform_low"], s["max_skew_uniform_high"]) == pytest.approx(
        (math.log(2 * lo), math.log(2 * hi)), abs=0.01)
    assert (male["rd_low"], male["rd_high"]) == pytest.approx((200 * (lo - 0.5), 200 * (hi - 0.5)), abs=0.8)
    # FD = p / (1 - p)
    assert (s["fd_low"], s["fd_high"]) == pytest.approx((lo / (1 - lo), hi / (1 - hi)), rel=0.03)
    assert s["tvd"] == pytest.approx(0.4) and s["tvd_low"] <= s["tvd"] <= s["tvd_high"]


def test_dirichlet_interval_holds_its_estimate_where_the_bootstrap_collapses():
    # 20 of 20 Male: every bootstrap resample is the same ranking (a zero-width interval); the
    # posterior Beta(20.5, 0.5) lies wholly below a share of 1, so its upper quantile misses the
    # estimate TVD = 0.5: the interval is widened to hold it
    r = _ranking(["Male"] * 20)
    _, boot = m.audit_tables(r, GENDER_DIST, [20], n_boot=2000, interval="bootstrap-normal")
    _, post = m.audit_tables(r, GENDER_DIST, [20], n_boot=40_000, interval="dirichlet")
    b, p = boot.iloc[0], post.iloc[0]
    assert b["tvd_low"] == b["tvd_high"] == 0.5
    assert p["tvd_high"] == p["tvd"] == 0.5
    assert p["tvd_low"] == pytest.approx(stats.beta.ppf(0.025, 20.5, 0.5) - 0.5, abs=0.004)
    for metric in ("fd", "tvd", "max_skew_uniform", "max_skew_dataset", "ndkl_uniform", "ndkl_dataset"):
        assert p[f"{metric}_low"] <= p[metric] <= p[f"{metric}_high"], metric


def test_dirichlet_interval_reaches_the_target_value_when_the_shares_allow_it():
    # 10 of 20 Male: parity is inside the share's posterior interval, so TVD and MaxSkew (distances,
    # never negative, whose posterior draws all lie above 0) reach down to 0 and FD to 1
    assert m.shares_hold_target([10, 10], [0.5, 0.5], 0.95)
    assert not m.shares_hold_target([18, 2], [0.5, 0.5], 0.95)
    _, sm = m.audit_tables(_ranking(["Male", "Female"] * 10), GENDER_DIST, [20], n_boot=2000, interval="dirichlet")
    s = sm.iloc[0]
    assert s["tvd_low"] == 0 and s["max_skew_uniform_low"] == 0 and s["fd_low"] == 1
    # |p - 1/2| with p ~ Beta(10.5, 10.5), symmetric: its 97.5% quantile is p's 98.75% one, less 1/2
    assert s["tvd_high"] == pytest.approx(stats.beta.ppf(0.9875, 10.5, 10.5) - 0.5, abs=0.01)
    # seeded: the same twice
    pd.testing.assert_frame_equal(sm, m.audit_tables(_ranking(["Male", "Female"] * 10), GENDER_DIST, [20],
                                                     n_boot=2000, interval="dirichlet")[1])


def test_kl_at_k_hand_computed(tables):
    # 3 Male 1 Female against 1/2, 1/2: 0.75 ln 1.5 + 0.25 ln 0.5
    assert m.kl_divergence(counts(3, 1), {"Male": 0.5, "Female": 0.5}) == pytest.approx(0.1308120, abs=1e-7)
    assert m.kl_divergence(counts(6, 4), [0.6, 0.4]) == 0.0                       # the dataset's own mix
    assert m.kl_divergence(counts(4, 0), [0.8, 0.2]) == pytest.approx(-math.log(0.8))  # 0 ln 0 = 0
    assert m.kl_divergence(counts(1, 1), [1.0, 0.0]) == math.inf                   # a class the target lacks
    assert math.isnan(m.kl_divergence(counts(0, 0), [0.5, 0.5]))
    r, dist = tables
    _, sm = m.audit_tables(r, dist, [4], n_boot=50, seed=0)
    s = sm.set_index(["query", "k", "attribute"])
    # doctor, k=4: 3 Male 1 Female vs the dataset's 60/40
    assert s.loc[("a doctor", 4, "gender"), "kl_dataset"] == pytest.approx(0.75 * math.log(0.75 / 0.6)
                                                                             + 0.25 * math.log(0.25 / 0.4))
    # a Black person, k=4 (3 rows): race 2 Black 1 White vs 50/50/0 (Indian absent from both)
    assert s.loc[("a Black person", 4, "race"), "kl_dataset"] == pytest.approx(
        2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3))
