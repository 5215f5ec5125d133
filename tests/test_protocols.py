"""Whole-protocol presets, published numbers beside ours, and the DataComp-style zero-shot table:
each checked by hand on tiny cases; one slow test runs the sem2026 protocol end to end on stand-ins."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vlmbias import VlmbiasError
from vlmbias.audit import datacomp, literature, protocols
from vlmbias.audit import zeroshot as zs
from vlmbias.audit.presets import query_sets
from vlmbias.audit.queries import expand_query_set
from vlmbias.config import protocol_deviations, validate
from vlmbias.testing import make_fairface_folder

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the presets

def test_every_protocol_declares_the_whole_protocol():
    assert protocols.available() == ["bendvlm", "berg2022", "sem2026", "thesis", "zeroshot_fairface"]
    for name in protocols.available():
        p = protocols.protocol(name)
        for key in ("kind", "metrics", "attributes", "scale", "convention", "dataset", "source"):
            assert key in p, (name, key)
        if p["kind"] == "retrieval":
            assert p["ks"] and p["target"] in ("dataset", "uniform")
            sets = query_sets(name)
            for qset in p["query_sets"]:
                assert len(expand_query_set(qset, sets[qset])) > 0
    with pytest.raises(VlmbiasError, match="unknown protocol 'sem2025'"):
        protocols.protocol("sem2025")


def test_sem2026_queries_are_bendvlms_strings():
    # SEM encodes BendVLM's stored query strings; the template must rebuild each one exactly
    sem = expand_query_set("s", query_sets("sem2026")["sem2026_stereotype"])
    bend = expand_query_set("b", query_sets("bendvlm")["bendvlm_stereotype"])
    assert len(sem) == 25
    assert [t[0] for t in sem["texts"]] == [t[0] for t in bend["texts"]]
    assert sem["texts"][0] == ["A photo of an addict."]
    p = protocols.protocol("sem2026")
    assert (p["ks"], p["target"], p["metrics"]) == ([500], "dataset", ["max_skew_dataset", "kl_dataset"])
    assert p["dataset"] == {"type": ["fairface"], "padding": "0.25", "split": "train+val"}


def test_zero_shot_prompts_still_load_beside_the_protocol_block():
    assert set(zs.load_prompts({})) >= {"race", "gender", "age", "label_sets"}


# ---------------------------------------------------------------- config checks

@pytest.fixture(scope="module")
def trainval(tmp_path_factory):
    root = tmp_path_factory.mktemp("ff")
    make_fairface_folder(root, per_cell=1, split="train")
    make_fairface_folder(root, per_cell=1, split="val", seed=1)
    return root


def sem_config(root, **over):
    c = yaml.safe_load((REPO / "config/protocols/sem2026.yaml").read_text())
    c["datasets"]["fairface"]["root"] = str(root)
    c["models"] = {"m": {"backend": "hf", "name": "openai/clip-vit-base-patch16"}}
    c.update(copy.deepcopy(over))
    return c


def test_a_protocol_fixed_field_changed_silently_is_refused(trainval):
    ok = sem_config(trainval)
    validate(ok)
    assert "sem2026_stereotype" in ok["query_sets"] and protocol_deviations(ok) == []
    with pytest.raises(VlmbiasError, match=r"protocol 'sem2026' fixes retrieval.k: .*\[500\].*\[20\].*"
                                           r"add 'retrieval.k' to protocol_deviations"):
        validate(sem_config(trainval, retrieval={"k": [20]}, leaderboard={"k": 20}))
    bad = sem_config(trainval)
    bad["datasets"]["fairface"]["padding"] = "1.25"
    with pytest.raises(VlmbiasError, match="fixes dataset.padding"):
        validate(bad)
    bad = sem_config(trainval, protocol_deviations=["dataset.padding"])
    bad["datasets"]["fairface"].update(padding="1.25", split="val")
    with pytest.raises(VlmbiasError, match="fixes dataset.split"):
        validate(bad)
    with pytest.raises(VlmbiasError, match="protocol_deviations names"):
        protocols.deviations({**sem_config(trainval), "protocol_deviations": ["k"]})


def test_fairface_train_plus_val_pools_both_splits(trainval):
    from vlmbias.audit.data import fairface_manifest

    both, missing, _ = fairface_manifest(trainval, "train+val")
    assert len(both) == 2 * 14 and missing.empty and both["image_id"].is_unique
    assert set(both["image_id"].str.split("/").str[0]) == {"train", "val"}


def test_a_declared_deviation_runs_and_is_named(trainval):
    c = sem_config(trainval, retrieval={"k": [20]}, leaderboard={"k": 20}, protocol_deviations=["retrieval.k"])
    validate(c)
    assert protocol_deviations(c) == ["retrieval.k"]
    # declared but not actually different: not a deviation
    same = sem_config(trainval, protocol_deviations=["retrieval.k"])
    validate(same)
    assert protocol_deviations(same) == []


# ---------------------------------------------------------------- published beside ours

def _tables():
    """Summaries of two queries at k=500 for two models, and one classes row at k=20."""
    rows = []
    for model in ("clip", "other"):
        for qid, v, lo, hi in (("thief", 0.3, 0.2, 0.4), ("thug", 0.5, 0.4, 0.6)):
            rows.append({"dataset": "ff", "model": model, "query_set": "sem2026_stereotype", "query_id": qid,
                         "query": qid, "k": 500, "attribute": "race", "max_skew_dataset": v,
                         "max_skew_dataset_low": lo, "max_skew_dataset_high": hi, "kl_dataset": v / 2})
    classes = pd.DataFrame([{"dataset": "ff", "model": "clip", "query_set": "table", "query_id": "a nurse",
                             "query": "a nurse", "k": 20, "attribute": "gender", "class": "Female",
                             "proportion": 0.9, "proportion_low": 0.7, "proportion_high": 0.97, "rd": 80.0,
                             "rd_low": 40.0, "rd_high": 95.0}])
    return pd.DataFrame(rows), classes


def _published(**over):
    row = {c: "" for c in literature.PUBLISHED_COLUMNS}
    row.update({"protocol": "sem2026", "model": "ViT-B-16:openai", "dataset": "fairface",
                "query_set": "sem2026_stereotype", "attribute": "race", "k": 500, "metric": "max_skew_dataset",
                "value": 0.45, "scale": 1, "verified": "yes", "query": np.nan, "class": np.nan}, **over)
    return row


def test_ours_beside_published_by_hand():
    summary, classes = _tables()
    pub = pd.DataFrame([_published(), _published(metric="kl_dataset", value=0.2),
                        _published(protocol="thesis", model="ViT-B-16:openai", query_set="table", query="a nurse",
                                   attribute="gender", **{"class": "Female"}, k=20, metric="share", value=95.0,
                                   scale=100)])
    ids = {"clip": "openai/clip-vit-base-patch16", "other": "tiny"}
    t = literature.published_comparison(summary, classes, "sem2026", pub, ids, {"ff": "fairface"})
    assert t.columns.tolist() == literature.COMPARISON_COLUMNS and len(t) == 4  # 2 models x 2 values
    r = t[(t["model"] == "clip") & (t["metric"] == "max_skew_dataset")].iloc[0]
    # mean of 0.3 and 0.5; each SE 0.1/1.96 -> half width 1.96 * sqrt(2 * (0.1/1.96)^2) / 2
    half = np.sqrt(2) * 0.1 / 2
    assert r.ours == pytest.approx(0.4) and (r.ours_low, r.ours_high) == pytest.approx((0.4 - half, 0.4 + half))
    assert r.difference == pytest.approx(-0.05) and r.published_inside == "yes" and r.ours_n == 2
    assert r.comparable == "comparable"  # the hub name of the same OpenAI weights
    kl = t[(t["model"] == "clip") & (t["metric"] == "kl_dataset")].iloc[0]
    assert kl.ours == pytest.approx(0.2) and kl.published_inside == ""  # KL has no interval
    other = t[t["model"] == "other"].iloc[0]
    assert other.comparable == "not comparable"
    short = summary.assign(flags=np.where(summary["query_id"] == "thug", "k_above_images", ""))
    flagged = literature.published_comparison(short, classes, "sem2026", pub, ids, {"ff": "fairface"})
    assert flagged["why_not_comparable"].str.contains(r"fewer than 500 labelled images \(k_above_images\)").all()
    assert "model tiny is not the published model ViT-B-16:openai" in other.why_not_comparable
    dev = literature.published_comparison(summary, classes, "sem2026", pub, ids, {"ff": "fairface"}, ["retrieval.k"])
    assert (dev["comparable"] == "not comparable").all()
    assert dev["why_not_comparable"].str.contains("deviates from the protocol in retrieval.k").all()
    wrong = literature.published_comparison(summary, classes, "sem2026", pub, ids, {"ff": "utkface"})
    assert wrong["why_not_comparable"].str.contains("is not the published fairface").all()
    # a class share on the published x100 scale: 0.9 -> 90, interval [70, 97] holds 95
    s = literature.published_comparison(summary, classes, "thesis", pub, ids, {"ff": "fairface"})
    s = s[s["model"] == "clip"].iloc[0]
    assert (s.ours, s.ours_low, s.ours_high, s.difference) == pytest.approx((90.0, 70.0, 97.0, -5.0))
    assert s.published_inside == "yes"


def test_the_shipped_table_reads_and_names_its_sources(tmp_path):
    pub = literature.read_published()
    assert set(pub["verified"]) <= {"yes", "no"} and pub["source"].str.len().min() > 10
    for name, g in pub.groupby("protocol"):
        p = protocols.protocol(name)
        assert set(g["query_set"]) <= set(p["query_sets"]) and set(g["k"].astype(int)) <= set(p["ks"])
    sem = pub[pub["protocol"] == "sem2026"]
    assert set(sem["model"]) == {"ViT-B-16:openai", "ViT-L-14-336:openai"} and len(sem) == 8
    bad = tmp_path / "mine.csv"
    pd.DataFrame([_published(verified="maybe")]).to_csv(bad, index=False)
    with pytest.raises(VlmbiasError, match="line 2: verified must be yes or no"):
        literature.read_published(bad)


# ---------------------------------------------------------------- the DataComp-style table

def test_datacomp_table_by_hand():
    # race accuracy (binary): White 9/10, Black 6/10, Indian 3/5 -> non-White 9/15 = 60%, overall 18/25
    acc = pd.DataFrame([
        ("race_binary", "all", "all", 25, 18), ("race_binary", "race", "White", 10, 9),
        ("race_binary", "race", "Black", 10, 6), ("race_binary", "race", "Indian", 5, 3),
        ("race", "all", "all", 25, 10), ("race", "race", "White", 10, 8), ("race", "race", "Black", 10, 1),
        ("race", "race", "Indian", 5, 1),
        ("gender", "all", "all", 25, 20), ("gender", "race", "White", 10, 10), ("gender", "race", "Black", 10, 6),
        ("gender", "race", "Indian", 5, 4),
        ("gender", "gender_race", "Male|White", 5, 5), ("gender", "gender_race", "Female|White", 5, 5),
        ("gender", "gender_race", "Male|Black", 5, 4), ("gender", "gender_race", "Female|Black", 5, 2),
        ("gender", "gender_race", "Male|Indian", 2, 2), ("gender", "gender_race", "Female|Indian", 3, 2),
    ], columns=["attribute", "group_attribute", "group", "n", "correct"])
    harm = pd.DataFrame([("all", "all", 25, 3, 2), ("race", "White", 10, 1, 0), ("race", "Black", 10, 2, 2),
                         ("race", "Indian", 5, 0, 0)],
                        columns=["group_attribute", "group", "n", "crime_related", "non_human"])
    t = datacomp.datacomp_table(acc, harm).set_index(["table", "row", "column"])
    assert t.loc[("3-4", "white", "race"), "value"] == pytest.approx(90.0)
    assert t.loc[("3-4", "non-white", "race"), ["value", "n"]].tolist() == pytest.approx([60.0, 15])
    assert t.loc[("3-4", "overall", "race"), "value"] == pytest.approx(72.0)
    assert "DataComp" in t.loc[("3-4", "white", "race"), "convention"]
    assert t.loc[("3-4", "non-white", "gender"), "value"] == pytest.approx(100 * 10 / 15)
    assert ("3-4", "white", "age") not in t.index  # age not classified: no column
    assert t.loc[("5", "female", "Black"), "value"] == pytest.approx(40.0)
    assert t.loc[("5", "male", "Indian"), "value"] == pytest.approx(100.0)
    assert t.loc[("6", "non-human", "Black"), "value"] == pytest.approx(20.0)
    assert t.loc[("6", "crime-related", "White"), "value"] == pytest.approx(10.0)
    assert list(t.loc["6"].loc["crime-related"].index) == ["Black", "White", "Indian"]  # DataComp's order
    text = datacomp.format_tables(t.reset_index())
    assert "# Table 5" in text and "40.0" in text
    # without race_binary the race column is 7-way accuracy, and says so
    t7 = datacomp.datacomp_table(acc[acc["attribute"] != "race_binary"], harm).set_index(["table", "row", "column"])
    assert t7.loc[("3-4", "white", "race"), "value"] == pytest.approx(80.0)
    assert "top-1 accuracy" in t7.loc[("3-4", "white", "race"), "convention"]


def test_race_binary_scores_white_vs_non_white():
    class Enc:
        AXES = {"w": 0, "b": 1, "i": 2}

        def encode_texts(self, texts):
            out = np.zeros((len(texts), 3), np.float32)
            for j, t in enumerate(texts):
                out[j, self.AXES[t]] = 1
            return out
    labels = pd.DataFrame({"image_id": list("abcd"), "race": ["White", "Black", "Indian", "White"]})
    emb = np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]  # a right, b and c confused (both non-White), d wrong
    prompts = {"race": {"White": ["w"], "Black": ["b"], "Indian": ["i"]}}
    t = zs.accuracy_table(labels, emb, Enc(), prompts, ["race"], race_binary=True)
    t = t.set_index(["attribute", "group_attribute", "group"])
    assert t.loc[("race", "all", "all"), "correct"] == 1
    assert t.loc[("race_binary", "all", "all"), "correct"] == 3  # only d crosses the White line
    assert ("race_binary", "all", "all") not in zs.accuracy_table(labels, emb, Enc(), prompts, ["race"]).set_index(
        ["attribute", "group_attribute", "group"]).index


# ---------------------------------------------------------------- the sem2026 protocol, end to end

@pytest.mark.slow
def test_sem2026_run_on_stand_ins_puts_published_beside_ours(tmp_path, tiny_hf):
    root = tmp_path / "ff"
    make_fairface_folder(root, per_cell=3, split="train")
    make_fairface_folder(root, per_cell=3, split="val", seed=1)
    # the protocol as shipped (k = 500 on 84 stand-in images: each ranking holds them all, flagged
    # k_above_images), only the data folder and the model swapped for stand-ins
    config = sem_config(root, models={"tiny": {"backend": "hf", "name": str(tiny_hf)}},
                        metrics={"n_boot": 200, "interval": "bootstrap-normal", "attributes": ["gender", "race"]},
                        embed={"num_workers": 0})
    config.pop("threads")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "results/sem2026/leaderboard/published_comparison.csv",
           "results/sem2026/summary/summary.rst", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--quiet", "rules", "--configfile", str(tmp_path / "config.yaml")]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = tmp_path / "results/sem2026"
    t = pd.read_csv(res / "leaderboard/published_comparison.csv")
    assert len(t) == 8 and set(t["metric"]) == {"max_skew_dataset", "kl_dataset"}
    assert (t["comparable"] == "not comparable").all()
    assert t["why_not_comparable"].str.contains("is not the published model").all()
    assert not t["why_not_comparable"].str.contains("deviates").any()
    assert t["why_not_comparable"].str.contains("our top 500 holds fewer than 500 labelled images").all()
    assert t["ours"].notna().all() and (t["ours"] >= 0).all() and t["ours_n"].eq(25).all()
    assert np.allclose(t["difference"], t["ours"] - t["published"])
    skew = t[t["metric"] == "max_skew_dataset"]
    assert skew["published_inside"].isin(["yes", "no"]).all()
    summary = pd.read_csv(res / "metrics/fairface/tiny/sem2026_stereotype_summary.csv")
    race = summary[(summary["k"] == 500) & (summary["attribute"] == "race")]
    assert t[(t["metric"] == "kl_dataset") & (t["attribute"] == "race")]["ours"].iloc[0] == pytest.approx(
        race["kl_dataset"].mean())
    page = (res / "summary/summary.rst").read_text()
    assert "Ours beside published (sem2026)" in page and "not comparable" in page
