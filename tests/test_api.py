"""The Python API (vlmbias.api): one-call audits through the command's own chain, metrics on a
ranking with one signature, and the documented examples of docs/python-api.md, executed."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import vlmbias
from vlmbias import VlmbiasError, api
from vlmbias.audit.metrics import CLASS_COLUMNS, SUMMARY_COLUMNS
from vlmbias.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
RANKING = ["Male", "Male", "Female", "Male", "Male", "Female", "Male", "Male", "Male", "Male"]


# ---------------------------------------------------------------- metrics on a ranking, by hand

def test_metrics_on_a_ranking_known_answers():
    assert api.counts(RANKING, k=5).to_dict() == {"Female": 1, "Male": 4}
    assert api.max_skew(RANKING, k=5) == pytest.approx(math.log(0.8 / 0.5))
    assert api.min_skew(RANKING, k=5) == pytest.approx(math.log(0.2 / 0.5))
    assert api.max_skew(RANKING, k=5, target={"Female": 47, "Male": 53}) == pytest.approx(math.log(0.8 / 0.53))
    assert api.fd(RANKING, k=10) == 4.0
    assert api.fd(RANKING, k=2) == 1.0           # thesis: the absent Female is ignored, 2 / 2
    assert api.fd(RANKING, k=2, strict=True, classes=["Female", "Male"]) == math.inf
    assert api.tvd(RANKING, k=10) == pytest.approx(0.3)
    assert api.kl(RANKING, k=10) == pytest.approx(0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5))
    rd = api.rd(RANKING, k=10, target={"Female": 0.4, "Male": 0.6})
    assert rd.to_dict() == pytest.approx({"Female": -50.0, "Male": 100 * (0.8 - 0.6) / 0.6})
    # NDKL at k=1: one Male against uniform, KL = ln 2 at the only prefix
    assert api.ndkl(RANKING, k=1) == pytest.approx(math.log(2))
    assert api.ndkl(["Female", "Male"] * 4, k=8) < api.ndkl(RANKING, k=8)
    # a class absent from the ranking counts when named: 4 Male, 0 Female, Other -> skew with 1/k
    assert api.counts(["Male"] * 4, classes=["Female", "Male", "Other"]).tolist() == [0, 4, 0]
    assert api.min_skew(["Male"] * 4, classes=["Female", "Male"]) == pytest.approx(math.log(0.25 / 0.5))
    # unlabelled items take a rank but are not counted
    assert api.counts(["Male", None, "", "Female"], k=3).to_dict() == {"Female": 0, "Male": 1}


def test_metrics_all_take_k_and_target_the_same_way():
    target = {"Female": 0.5, "Male": 0.5}
    for fn in (api.fd, api.rd, api.skew, api.max_skew, api.min_skew, api.ndkl, api.kl, api.tvd, api.counts,
               api.shares):
        fn(RANKING, k=20, target=target)   # k beyond the ranking: all of it
        fn(RANKING, 3, target)             # positional, in the documented order
    with pytest.raises(VlmbiasError, match="k must be a positive integer"):
        api.max_skew(RANKING, k=0)
    with pytest.raises(VlmbiasError, match="needs classes="):
        api.max_skew(RANKING, target=[0.5, 0.5])
    with pytest.raises(VlmbiasError, match="not among classes"):
        api.max_skew(RANKING, classes=["Female"])
    with pytest.raises(VlmbiasError, match="sequence of class labels"):
        api.ndkl("Male", k=1)


# ---------------------------------------------------------------- audit_model

@pytest.fixture(scope="module")
def labelled_folder(fairface_dir, tmp_path_factory):
    """A plain image folder with labels.csv (not the FairFace layout): the user's own data."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    shutil.copytree(fairface_dir / "val", root / "img")
    df = pd.read_csv(fairface_dir / "fairface_label_val.csv")
    df["file"] = df["file"].str.replace("val/", "img/", regex=False)
    df[["file", "gender", "race", "age"]].to_csv(root / "labels.csv", index=False)
    return root


def test_audit_model_matches_the_command(tiny_hf, labelled_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMBIAS_CACHE", str(tmp_path / "cache"))
    res = vlmbias.audit_model(f"hf:{tiny_hf}", labelled_folder, ["a doctor", "a nurse"],
                              csv=labelled_folder / "labels.csv", k=6, attributes=["gender", "race"],
                              workers=0, n_boot=100)
    assert isinstance(res, vlmbias.AuditResult)
    assert list(res.classes.columns) == CLASS_COLUMNS and list(res.summary.columns) == SUMMARY_COLUMNS
    assert len(res.summary) == 2 * 2 and set(res.summary["k"]) == {6}
    r = res.ranking("a doctor")
    assert r["rank"].tolist() == list(range(1, 7)) and r["score"].is_monotonic_decreasing
    # the summary is the metrics of the ranking it came from (api functions agree with the tables)
    s = res.summary.set_index(["query", "attribute"])
    classes = list(res.distribution.query("attribute == 'gender'")["class"])
    assert s.loc[("a doctor", "gender"), "fd"] == api.fd(r["gender"].tolist(), classes=classes)
    assert s.loc[("a doctor", "gender"), "max_skew_uniform"] == pytest.approx(
        api.max_skew(r["gender"].tolist(), classes=classes))
    assert res.info["cache"]["hit"] is False
    # the command, on the same cache, reads the embeddings the API wrote and gives the same numbers
    assert main(["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(labelled_folder), "--csv",
                 str(labelled_folder / "labels.csv"), "--query", "a doctor", "--query", "a nurse", "--k", "6",
                 "--attributes", "gender", "race", "--workers", "0", "--n-boot", "100", "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    assert out["cache"]["hit"] is True
    assert out["queries"][0]["attributes"]["gender"]["summary"]["fd"] == s.loc[("a doctor", "gender"), "fd"]
    # save: the tables on disk, read back equal
    folder = res.save(tmp_path / "out")
    assert pd.read_csv(folder / "summary.csv")["fd"].tolist() == pytest.approx(res.summary["fd"].tolist())
    back = pd.read_parquet(folder / "rankings.parquet")
    assert back["image_id"].tolist() == res.rankings["image_id"].tolist()
    assert np.allclose(back["score"], res.rankings["score"])
    assert (folder / "info.json").is_file()


def test_audit_model_errors_are_sentences(tiny_hf, labelled_folder, tmp_path):
    with pytest.raises(VlmbiasError, match="has no option 'n_bootstrap'"):
        vlmbias.audit_model(f"hf:{tiny_hf}", labelled_folder, "a doctor", csv=labelled_folder / "labels.csv",
                            n_bootstrap=10)
    with pytest.raises(VlmbiasError, match="--k must be at least 1"):
        vlmbias.audit_model(f"hf:{tiny_hf}", labelled_folder, "a doctor", csv=labelled_folder / "labels.csv", k=0)
    with pytest.raises(VlmbiasError, match="either --query"):
        vlmbias.audit_model(f"hf:{tiny_hf}", labelled_folder, csv=labelled_folder / "labels.csv")


# ---------------------------------------------------------------- the documented examples run

def test_python_api_doc_examples_run(tiny_hf, labelled_folder, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 4
    shutil.copytree(tiny_hf, tmp_path / "my-clip")
    shutil.copytree(labelled_folder, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMBIAS_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert (tmp_path / "my-audit" / "summary.csv").is_file()
    out = capsys.readouterr().out
    assert "0.47" in out and "4.0" in out and "inf" in out   # the commented known answers


def test_readme_python_example_runs(tiny_hf, labelled_folder, tmp_path, monkeypatch):
    """The README's Python block, with its model path pointed at the tiny model."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, flags=re.S).group(1)
    assert "/models/my-clip" in block
    shutil.copytree(labelled_folder, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMBIAS_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(compile(block.replace("/models/my-clip", str(tiny_hf)), "README.md", "exec"), namespace)
    assert sorted(p.name for p in (tmp_path / "my-audit").iterdir()) == [
        "classes.csv", "distribution.csv", "info.json", "queries.csv", "rankings.parquet", "summary.csv"]
