"""Run information for the report: the configuration as used and the software versions."""
import json

import pandas as pd
import torch
import yaml

from vlmbias.report import main, software_versions


def test_versions_name_the_packages_that_change_numbers():
    v = software_versions().set_index("package")["version"]
    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert {"python", "transformers", "open_clip_torch", "snakemake", "cuda", "gpu"} <= set(v.index)


def test_run_info_writes_config_and_versions(tmp_path):
    config = {"run_name": "r", "query_sets": {"q": {"queries": ["一位医生"]}}}
    main(["run-info", "--config-json", json.dumps(config), "--out-config", str(tmp_path / "c.yaml"),
          "--out-versions", str(tmp_path / "v.csv")])
    assert yaml.safe_load((tmp_path / "c.yaml").read_text(encoding="utf-8")) == config
    assert "torch" in set(pd.read_csv(tmp_path / "v.csv")["package"])


def test_summary_page_and_headline_table():
    import pandas as pd
    from docutils.core import publish_parts

    from vlmbias.report import headline_table, summary_rst

    rows = []
    for model, skew in (("a", 0.4055), ("b", 0.0)):
        for k in (20, 200):
            for attr in ("gender", "race", "age"):
                rows.append({"model": model, "query_set": "s", "query": "a doctor", "attribute": attr, "k": k,
                             "max_skew_uniform": skew if k == 200 else 9.9, "max_skew_uniform_low": skew - 0.1,
                             "max_skew_uniform_high": skew + 0.1, "interval_undercovers": "",
                             "skew_convention": "published", "interval_method": "bootstrap-normal",
                             "p_value": 1e-4 if skew else 0.6, "p_adjusted": 1e-3 if skew else 0.6,
                             "skew_test": "skewed" if skew else "no skew shown"})
    head = headline_table(pd.DataFrame(rows))
    assert set(head["k"]) == {200} and set(head["attribute"]) == {"gender", "race"}  # largest k, gender & race
    assert head.set_index(["model", "attribute"]).loc[("a", "gender"), "max_skew_uniform"] == 0.4055
    checks = {"world-clip": pd.DataFrame({"check": ["x", "y", "z"], "passed": [True, False, False],
                                          "kind": ["recovery", "recovery", "limit"]})}
    config = {"run_name": "r", "datasets": {"d": {}}, "models": {"a": {}, "b": {}}, "calibration": {"x": 1},
              "retrieval": {"k": [20, 200]}}
    rst = summary_rst(config, head, checks, None)
    assert "1 of 3 checks passed; failed: y; at a known metric limit: z." in rst and "0.406 [0.305, 0.506] skewed" in rst
    assert "0.000 [-0.100, 0.100] no skew shown" in rst and "2 of 4 (query, model) rows show a skew" in rst
    assert list(head.columns[6:10]) == ["low", "high", "p_adjusted", "skew_test"]
    assert "MaxSkew as published (raw share" in rst and "the rest bootstrap-normal" in rst
    # links only to the categories this run has (two models: their leaderboard)
    assert "Calibration_" in rst and "Leaderboard_" in rst and "Mitigation_" not in rst
    targets = "\n".join(f".. _{c}: javascript:void(0)" for c in ("Audit", "Leaderboard", "Calibration", "Run"))
    html = publish_parts(rst + "\n" + targets, writer_name="html",
                         settings_overrides={"halt_level": 2, "report_level": 2})["html_body"]
    assert "<table" in html and "world-clip" in html


def test_summary_page_leads_with_a_query_by_attribute_matrix():
    import pandas as pd
    from docutils.core import publish_parts

    from vlmbias.report import headline_table, summary_rst

    rows = []
    for query, g_skew, r_test in (("a doctor", 0.4055, "skewed"), ("一位首席执行官", 0.0, "no skew shown")):
        for attr, skew in (("gender", g_skew), ("race", 1.25)):
            rows.append({"model": "m", "query_set": "s", "query": query, "attribute": attr, "k": 50,
                         "max_skew_uniform": skew, "max_skew_uniform_low": max(skew - 0.1, 0),
                         "max_skew_uniform_high": skew + 0.1, "interval_undercovers": "",
                         "skew_test": r_test if attr == "race" else ("skewed" if g_skew else "no skew shown"),
                         "skew_convention": "published", "interval_method": "dirichlet-test"})
    head = headline_table(pd.DataFrame(rows))
    config = {"run_name": "r", "datasets": {"d": {}}, "models": {"m": {}}, "retrieval": {"k": [50]}}
    rst = summary_rst(config, head, {"m": pd.DataFrame({"check": ["x"], "passed": [True]})}, None)
    # the matrix comes before the calibration verdict and the long table
    assert rst.index("At a glance") < rst.index("Calibration verdict") < rst.index("Headline: MaxSkew@k")
    glance = rst[rst.index("At a glance"):rst.index("Calibration verdict")]
    assert "s (k = 50)" in glance and "     - gender\n     - race" in glance
    # bold follows the parity test, not the size: doctor skewed on both (bold); the Chinese query's race
    # 1.25 is as large, but its test shows no skew (plain)
    assert "   * - a doctor\n     - **0.41**\n     - **1.25**" in glance
    assert "   * - 一位首席执行官\n     - 0.00\n     - 1.25" in glance
    html = publish_parts(rst + "\n" + "\n".join(f".. _{c}: javascript:void(0)" for c in ("Audit", "Calibration", "Run")),
                         writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["html_body"]
    assert "<strong>0.41</strong>" in html
