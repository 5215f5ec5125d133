"""`vlmbias audit --output DIR`: the workflow's tables on disk, rankings in the JSON, --precision int8."""
import json

import pandas as pd
import pytest

from vlmbias.cli import main

RANKING_COLUMNS = ["model", "dataset", "query_set", "query_id", "query", "lang", "concept", "rank", "image_id",
                   "score"]


def test_output_writes_the_workflows_tables_and_json_rankings(tiny_hf, fairface_dir, tmp_path, capsys):
    out = tmp_path / "kept" / "audit"
    rc = main(["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(fairface_dir), "--cache", str(tmp_path / "c"),
               "--workers", "0", "--n-boot", "50", "--query", "a doctor", "--query", "a nurse", "--k", "5",
               "--attributes", "gender", "race", "--json", "--output", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "classes.csv", "rankings.csv", "summary.csv"]
    assert json.loads((out / "audit.json").read_text()) == res

    rankings = pd.read_csv(out / "rankings.csv", keep_default_na=False)
    assert all(c in rankings.columns for c in RANKING_COLUMNS + ["gender", "race", "age"])
    assert len(rankings) == 2 * 5 and rankings.groupby("query")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 2
    for q in res["queries"]:  # the JSON's ranking is the table's, in rank order, scores descending
        ranked = rankings[rankings["query"] == q["query"]]
        assert [r["image_id"] for r in q["ranking"]] == ranked["image_id"].tolist()
        assert [r["score"] for r in q["ranking"]] == pytest.approx(ranked["score"].tolist(), abs=1e-6)
        assert [r["score"] for r in q["ranking"]] == sorted((r["score"] for r in q["ranking"]), reverse=True)
        assert [r["gender"] for r in q["ranking"]] == ranked["gender"].tolist()
        # the class counts are the ranking's labels counted
        counts = {c["class"]: c["count"] for c in q["attributes"]["gender"]["classes"]}
        assert counts == {g: int((ranked["gender"] == g).sum()) for g in counts}

    classes = pd.read_csv(out / "classes.csv")
    summary = pd.read_csv(out / "summary.csv")
    for col in ("query_id", "k", "n", "attribute", "class", "count", "proportion", "rd", "skew_uniform"):
        assert col in classes.columns
    for col in ("fd", "fd_low", "fd_high", "max_skew_uniform", "ndkl_dataset", "p_value"):
        assert col in summary.columns
    assert set(summary["attribute"]) == {"gender", "race"} and len(summary) == 4


def test_output_that_is_a_file_is_refused_before_any_work(tiny_hf, fairface_dir, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(fairface_dir), "--query", "a doctor",
                 "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"error: --output must be a folder, but {target} is a file" in err and "Traceback" not in err
    assert target.read_text() == "keep me"


def test_precision_int8_is_offered(tiny_hf, fairface_dir, tmp_path, capsys):
    rc = main(["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(fairface_dir), "--cache", str(tmp_path),
               "--workers", "0", "--n-boot", "20", "--query", "a doctor", "--k", "4", "--precision", "int8",
               "--attributes", "gender", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"]["precision"] == "int8" and len(res["queries"][0]["ranking"]) == 4
