"""Experiments: Newcombe interval (textbook value), architecture comparison, web data vs retrievals."""
import math

import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias import experiments as ex
from vlmbias.audit.queries import caption_key
from vlmbias.io import read_table, run_cli


def classes_table(queries: dict, k: int = 20, query_set: str = "qs") -> pd.DataFrame:
    """A *_classes.csv-like table from {query: {attribute: {class: count}}} (query_id = query)."""
    rows = []
    for q, attrs in queries.items():
        for attr, counts in attrs.items():
            n = sum(counts.values())
            for c, x in counts.items():
                rows.append({"model": "m", "query_set": query_set, "query_id": q, "query": q, "k": k,
                             "attribute": attr, "class": c, "count": x, "proportion": x / n,
                             "proportion_low": 0.0, "proportion_high": 1.0, "dataset_proportion": 0.5})
    return pd.DataFrame(rows)


def labels_table(keywords: dict) -> pd.DataFrame:
    """A distribution.csv-like table from {keyword: {attribute: {class: count}}}."""
    rows = []
    for kw, attrs in keywords.items():
        for attr, counts in attrs.items():
            n = sum(counts.values())
            rows += [{"keyword": kw, "concept": kw, "attribute": attr, "class": c, "count": x,
                      "percent": 100 * x / n} for c, x in counts.items()]
    return pd.DataFrame(rows)


def g(male, female):
    return {"gender": {"Male": male, "Female": female}}


# ---------------------------------------------------------------- Newcombe, Holm

def test_newcombe_textbook_value():
    # Newcombe (1998), Stat Med 17:873, example (a): 56/70 vs 48/80, difference 0.2, 95% CI 0.0524 to 0.3339.
    lo, hi = ex.newcombe_diff_ci(48, 80, 56, 70)
    assert (float(lo), float(hi)) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    lo, hi = ex.newcombe_diff_ci(56, 70, 48, 80)  # B - A with the roles swapped: mirrored interval
    assert (float(lo), float(hi)) == pytest.approx((-0.3339, -0.0524), abs=5e-5)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04); NaN is not a test
    assert ex.holm([0.01, 0.04, 0.03, np.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(ex.holm([0.01, 0.04, 0.03, np.nan])[3])
    assert ex.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2*0.5, then max(1.0, 0.9): monotone


# ---------------------------------------------------------------- architecture

def test_identical_models_differ_by_nothing():
    t = classes_table({"a doctor": g(17, 3), "a nurse": g(2, 18)})
    out = ex.architecture_table({"clip": t, "siglip": t.copy()}, k=20)
    assert len(out) == 4 and set(out["model_a"]) == {"clip"} and set(out["model_b"]) == {"siglip"}
    assert (out["difference"] == 0).all()
    assert (out["difference_low"] < 0).all() and (out["difference_high"] > 0).all()
    assert (out["p_value"] == 1.0).all() and not out["significant"].any()


def test_planted_difference_is_significant():
    a = classes_table({"a doctor": g(18, 2), "a nurse": g(10, 10)})
    b = classes_table({"a doctor": g(4, 16), "a nurse": g(10, 10)})
    out = ex.architecture_table({"A": a, "B": b}, k=20).set_index(["query", "class"])
    doc = out.loc[("a doctor", "Male")]
    assert doc["count_a"] == 18 and doc["count_b"] == 4 and doc["n_a"] == doc["n_b"] == 20
    assert doc["difference"] == pytest.approx(0.2 - 0.9)
    assert doc["difference_high"] < 0  # the interval excludes 0
    # 2 x 2 table [[18, 2], [4, 16]]: expected 11 / 9 per row (all >= 5), chi2 = 2 * (49/11 + 49/9)
    assert doc["test"] == "chi2" and doc["chi2"] == pytest.approx(2 * (49 / 11 + 49 / 9))
    assert doc["p_holm"] == pytest.approx(2 * doc["p_value"])  # two tests, doctor has the smaller p
    assert doc["significant"] and not out.loc[("a nurse", "Male")]["significant"]


def test_small_counts_use_seeded_monte_carlo():
    a, b = classes_table({"q": g(5, 0)}, k=5), classes_table({"q": g(0, 5)}, k=5)
    out = ex.architecture_table({"A": a, "B": b}, k=5)
    # exact conditional test: only the two extreme tables reach chi2 = 10, P = 2 / C(10, 5) = 2/252
    assert set(out["test"]) == {"monte-carlo"} and out["chi2"].iloc[0] == pytest.approx(10.0)
    assert out["p_value"].iloc[0] == pytest.approx(2 / 252, abs=0.003)
    again = ex.architecture_table({"A": a, "B": b}, k=5)
    assert again["p_value"].iloc[0] == out["p_value"].iloc[0]


def test_every_pair_and_only_shared_queries_and_k():
    t1 = pd.concat([classes_table({"a doctor": g(17, 3), "a nurse": g(2, 18)}),
                    classes_table({"a doctor": g(150, 50)}, k=200)])
    t2 = classes_table({"a doctor": g(10, 10)})
    t3 = classes_table({"a doctor": g(12, 8), "a chef": g(10, 10)})
    out = ex.architecture_table({"m1": t1, "m2": t2, "m3": t3}, k=20)
    assert list(out[["model_a", "model_b"]].drop_duplicates().itertuples(index=False, name=None)) == \
        [("m1", "m2"), ("m1", "m3"), ("m2", "m3")]
    assert set(out["query"]) == {"a doctor"} and set(out["k"]) == {20}


def test_architecture_bad_input():
    t = classes_table({"a doctor": g(17, 3)})
    with pytest.raises(VlmbiasError, match=r"model 'B' lacks column\(s\) \['count'\]"):
        ex.architecture_table({"A": t, "B": t.drop(columns="count")}, k=20)
    with pytest.raises(VlmbiasError, match="share no"):
        ex.architecture_table({"A": t, "B": classes_table({"a nurse": g(1, 19)})}, k=20)
    with pytest.raises(VlmbiasError, match=r"no rows at k=10"):
        ex.architecture_table({"A": t, "B": t}, k=10)
    with pytest.raises(VlmbiasError, match="at least two models"):
        ex.architecture_table({"A": t}, k=20)
    with pytest.raises(VlmbiasError, match="repeats"):
        ex.architecture_table({"A": pd.concat([t, t]).drop(columns="query_set"), "B": t}, k=20)


# ---------------------------------------------------------------- training data

def test_caption_key():
    assert caption_key("  A   Doctor ") == "doctor"
    assert caption_key("an accountant") == caption_key("Accountant") == "accountant"
    assert caption_key("the CEO") == "ceo" and caption_key("apple") == "apple"


def test_tvd_js_and_chi2_by_hand():
    labels = labels_table({"doctor": g(3, 1)})   # web p = (0.75, 0.25)
    classes = classes_table({"a doctor": g(1, 1)}, k=2)  # retrieved q = (0.5, 0.5)
    out = ex.training_data_table(labels, classes, k=2)
    assert list(out["class"]) == ["Male", "Female"] and set(out["query"]) == {"a doctor"}
    assert list(out["web_proportion"]) == [0.75, 0.25] and list(out["retrieved_proportion"]) == [0.5, 0.5]
    assert out["tvd"].iloc[0] == pytest.approx(0.25)
    m = (0.625, 0.375)
    kl = lambda p: sum(x * math.log2(x / y) for x, y in zip(p, m))  # noqa: E731
    assert out["js_divergence"].iloc[0] == pytest.approx(0.5 * (kl((0.75, 0.25)) + kl((0.5, 0.5))))
    assert out["js_divergence"].iloc[0] == pytest.approx(0.048795, abs=1e-6)
    assert out["chi2"].iloc[0] == pytest.approx(0.25 / 1.5 + 0.25 / 0.5)  # E = (1.5, 0.5)
    assert out["note"].iloc[0] == ""


def test_keyword_matching_and_explicit_match():
    labels = labels_table({"doctor": g(8, 2), "CEO": g(9, 1), "nurse": g(1, 9), "plumber": g(5, 5)})
    classes = pd.concat([classes_table({"a doctor": g(17, 3), "A CEO": g(20, 0)}),
                         classes_table({"nurse-en": g(2, 18)}, query_set="lang")])
    out = ex.training_data_table(labels, classes, k=20)
    assert dict(out[["keyword", "query"]].drop_duplicates().values) == {"doctor": "a doctor", "CEO": "A CEO"}
    out = ex.training_data_table(labels, classes, k=20, match={"nurse": "nurse-en", "CEO": "a doctor"})
    pairs = dict(out[["keyword", "query_id"]].drop_duplicates().values)
    assert pairs == {"doctor": "a doctor", "CEO": "a doctor", "nurse": "nurse-en"}
    assert set(out.loc[out.keyword == "nurse", "query_set"]) == {"lang"}


def test_classes_missing_from_one_side_are_noted():
    labels = labels_table({"doctor": {"race": {"White": 6, "Black": 2, "Middle Eastern": 2}}})
    classes = classes_table({"a doctor": {"race": {"White": 10, "Black": 10, "Other": 0}}})
    out = ex.training_data_table(labels, classes, k=20)
    assert list(out["class"]) == ["White", "Black"]
    assert list(out["web_proportion"]) == [0.75, 0.25]  # renormalised over the shared classes
    assert "only in web labels: ['Middle Eastern']" in out["note"].iloc[0]
    assert "only in retrievals: ['Other']" in out["note"].iloc[0]


def test_training_data_bad_input():
    labels, classes = labels_table({"doctor": g(8, 2)}), classes_table({"a doctor": g(17, 3)})
    with pytest.raises(VlmbiasError, match=r"labels distribution lacks column\(s\) \['keyword'\]"):
        ex.training_data_table(labels.drop(columns="keyword"), classes, k=20)
    with pytest.raises(VlmbiasError, match="no keyword of the labels distribution"):
        ex.training_data_table(labels_table({"plumber": g(5, 5)}), classes, k=20)
    with pytest.raises(VlmbiasError, match=r"query_id\(s\) \['nope'\] absent"):
        ex.training_data_table(labels, classes, k=20, match={"doctor": "nope"})


# ---------------------------------------------------------------- CLI

def test_cli(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    classes_table({"a doctor": g(18, 2)}).to_csv(a, index=False)
    classes_table({"a doctor": g(4, 16)}).to_csv(b, index=False)
    ex.main(["architecture", "--classes", f"A={a}", f"B={b}", "--k", "20", "--out", str(tmp_path / "arch.csv")])
    arch = read_table(tmp_path / "arch.csv")
    assert len(arch) == 2 and arch["significant"].all()
    labels = tmp_path / "distribution.csv"
    labels_table({"physician": g(8, 2)}).to_csv(labels, index=False)
    ex.main(["training-data", "--labels", str(labels), "--classes", str(a), "--k", "20",
             "--match", "physician=a doctor", "--out", str(tmp_path / "web.csv")])
    assert read_table(tmp_path / "web.csv")["tvd"].iloc[0] == pytest.approx(0.1)
    assert run_cli(ex.main, ["architecture", "--classes", f"A={a}", "--k", "20", "--out", str(tmp_path / "x.csv")]) == 2
    assert run_cli(ex.main, ["architecture", "--classes", str(a), str(b), "--k", "20",
                             "--out", str(tmp_path / "x.csv")]) == 2
    assert run_cli(ex.main, ["training-data", "--labels", str(tmp_path / "none.csv"), "--classes", str(a),
                             "--k", "20", "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()
