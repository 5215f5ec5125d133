"""Repeated splits (mitigation.split.folds): fold 0 is the single split, the folds hold out different
concepts, every fitted method is fitted once per fold, and the comparison is averaged over folds
with a Student-t interval."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vlmbias import VlmbiasError
from vlmbias import config as vconfig
from vlmbias.mitigate.folds import combine, fold_leaderboard, fold_quality, main, t_interval
from vlmbias.mitigate.split import concept_split

REPO = Path(__file__).resolve().parents[1]


def _qsets():
    q = lambda names: {"queries": [{"text": f"a {c}", "concept": c} for c in names]}
    return {"g": q([f"g{i}" for i in range(6)]), "r": q([f"r{i}" for i in range(5)])}


def _default(folds=None):
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    if folds is not None:
        config["mitigation"]["split"]["folds"] = folds
    vconfig.validate(config)
    return config


def test_t_interval_known_answer():
    # 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t(0.975, df 2) = 4.302653 -> half width 4.302653 x 0.1 / sqrt(3) = 0.248414
    mean, low, high = t_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and low == pytest.approx(-0.048414, abs=1e-6)
    assert high == pytest.approx(0.448414, abs=1e-6)
    # 1, 3: mean 2, sd sqrt(2), t(0.975, df 1) = 12.706205 -> half width 12.706205
    assert t_interval([1.0, 3.0]) == pytest.approx((2.0, -10.706205, 14.706205), abs=1e-6)
    assert all(math.isnan(x) for x in t_interval([0.5])[1:])  # one fold: no spread to measure


def _summary(mean_after, queries=4):
    return pd.DataFrame([{"method": "m", "split": "held_out", "k": 20, "attribute": "gender", "metric": "tvd",
                          "queries": queries, "mean_before": 0.5, "mean_before_low": 0.4, "mean_before_high": 0.6,
                          "mean_after": mean_after, "mean_after_low": mean_after - 0.05,
                          "mean_after_high": mean_after + 0.05, "improved": 2, "worse": 0, "skewed_before": 3,
                          "skewed_after": 1, "judged": True, "relative_change": (mean_after - 0.5) / 0.5}])


def test_combine_averages_folds_with_a_t_interval_beside_the_per_query_one():
    out = combine({0: _summary(0.1), 1: _summary(0.2, queries=6), 2: _summary(0.3)})
    r = out.iloc[0]
    assert r["folds"] == 3 and r["queries"] == pytest.approx(14 / 3)
    assert r["mean_after"] == pytest.approx(0.2) and r["change"] == pytest.approx(-0.3)
    assert (r["mean_after_fold_low"], r["mean_after_fold_high"]) == pytest.approx((-0.048414, 0.448414), abs=1e-6)
    assert (r["change_fold_low"], r["change_fold_high"]) == pytest.approx((-0.548414, -0.051586), abs=1e-6)
    # the per-query interval averaged bound by bound; the base does not move between folds: zero width
    assert (r["mean_after_low"], r["mean_after_high"]) == pytest.approx((0.15, 0.25))
    assert r["mean_before_fold_low"] == pytest.approx(0.5) and r["mean_before_fold_high"] == pytest.approx(0.5)
    assert r["relative_change"] == pytest.approx(-0.6)
    cols = list(out.columns)
    assert cols.index("mean_after_fold_low") == cols.index("mean_after_high") + 1


def test_leaderboard_over_folds_averages_quality_and_names_one_method_once():
    def fold(v):
        held = _summary(v)
        return pd.concat([held, held.assign(split="fitting", mean_after=v / 2)], ignore_index=True)

    summary = combine({0: fold(0.1), 1: fold(0.3)})
    q = lambda model, acc: pd.DataFrame([{"model": model, "metric": "zero_shot_accuracy", "attribute": "gender",
                                          "split": "all", "value": acc, "low": acc - 0.1, "high": acc + 0.1, "n": 10}])
    quality = fold_quality({0: pd.concat([q("b", 0.9), q("b~m", 0.6)]), 1: pd.concat([q("b", 0.9), q("b~m~fold1", 0.8)])})
    assert sorted(set(quality["model"])) == ["b", "b~m"] and quality["fold"].tolist() == [0, 0, 1, 1]
    board = fold_leaderboard(summary, quality, 20).set_index("method")
    assert board.loc["m", "gender_tvd_held_out"] == pytest.approx(0.2)
    assert board.loc["m", "gender_tvd_fitting"] == pytest.approx(0.1)
    assert board.loc["m", "zero_shot_gender"] == pytest.approx(0.7) and board.loc["base", "zero_shot_gender"] == 0.9
    # two folds 0.1, 0.3: mean 0.2, sd sqrt(0.02), t(0.975, 1) = 12.706205 -> half width 12.706205 x 0.1 = 1.270620
    assert (board.loc["m", "gender_tvd_held_out_fold_low"], board.loc["m", "gender_tvd_held_out_fold_high"]) == \
        pytest.approx((0.2 - 1.270620, 0.2 + 1.270620), abs=1e-6)


def test_folds_cli_writes_every_fold_and_the_mean(tmp_path):
    tables, summaries = [], []
    for f, v in enumerate((0.1, 0.3)):
        tables.append(tmp_path / f"t{f}.csv")
        summaries.append(tmp_path / f"s{f}.csv")
        pd.DataFrame({"method": ["m"], "split": ["held_out"], "query": [f"q{f}"]}).to_csv(tables[-1], index=False)
        _summary(v).to_csv(summaries[-1], index=False)
    main(["--tables", *map(str, tables), "--summaries", *map(str, summaries), "--out-table", str(tmp_path / "t.csv"),
          "--out-summary", str(tmp_path / "s.csv"), "--out-leaderboard", str(tmp_path / "l.csv")])
    board = pd.read_csv(tmp_path / "l.csv").set_index("method")
    assert board.loc["m", "gender_tvd_held_out"] == pytest.approx(0.2) and board.loc["base", "gender_tvd_held_out"] == 0.5
    t = pd.read_csv(tmp_path / "t.csv")
    assert list(t.columns)[0] == "fold" and t["fold"].tolist() == [0, 1] and t["query"].tolist() == ["q0", "q1"]
    s = pd.read_csv(tmp_path / "s.csv")
    assert s.loc[0, "folds"] == 2 and s.loc[0, "mean_after"] == pytest.approx(0.2)
    with pytest.raises(VlmbiasError, match="2 comparison tables but 1 summaries"):
        main(["--tables", *map(str, tables), "--summaries", str(summaries[0]), "--out-table", "x", "--out-summary", "y"])


def test_fold_zero_is_the_single_split_and_folds_hold_out_different_concepts():
    single = concept_split(_qsets(), {"held_out_fraction": 0.4, "seed": 3})
    spec = {"held_out_fraction": 0.4, "seed": 3, "folds": 4}
    folds = [concept_split(_qsets(), spec, f) for f in range(4)]
    assert folds[0].equals(single)
    assert folds[2].equals(concept_split(_qsets(), {"held_out_fraction": 0.4, "seed": 5}))  # fold f: seed + f
    held = [frozenset(t.loc[t.split == "held_out", "concept"]) for t in folds]
    assert len(set(held)) > 1 and all(len(h) == 4 for h in held)  # round(0.4 x 6) + round(0.4 x 5)


def test_bad_fold_specs_are_one_sentence_errors():
    with pytest.raises(VlmbiasError, match="folds must be a whole number of at least 1, got 0"):
        concept_split(_qsets(), {"held_out_fraction": 0.4, "folds": 0})
    with pytest.raises(VlmbiasError, match="not a fixed held_out list"):
        concept_split(_qsets(), {"held_out": ["g1"], "folds": 2})
    with pytest.raises(VlmbiasError, match="fold 2 does not exist"):
        concept_split(_qsets(), {"held_out_fraction": 0.4, "folds": 2}, 2)
    config = _default()
    config["mitigation"]["split"] = {"held_out": ["nurse"], "folds": 2}
    with pytest.raises(VlmbiasError, match="at mitigation.split"):  # the schema: folds go with a fraction
        vconfig.validate(config)


def test_each_fold_fits_on_its_own_concepts():
    one, three = _default(), _default(folds=3)
    assert vconfig.n_folds(one) == 1 and vconfig.n_folds(three) == 3
    assert vconfig.held_out_concepts(three, 0) == vconfig.held_out_concepts(one)  # fold 0 is today's split
    assert vconfig.variant_names(one) == vconfig.variant_names(three, 0)  # and keeps its models' names
    assert len({tuple(vconfig.held_out_concepts(three, f)) for f in range(3)}) > 1
    for f in (1, 2):
        held = vconfig.held_out_concepts(three, f)
        proj = vconfig.query_set_spec(three, f"world-clip~projection~fold{f}", "world_gender")["transform"]["projection"]
        assert proj["concepts"] == vconfig.fitting_concepts(three, f) and not set(proj["concepts"]) & set(held)
        assert set(vconfig.acquire_spec(three, f)["exclude_concepts"]) >= set(held)
        adapter = vconfig.model_spec(three, f"world-clip~lora-thesis~fold{f}")["adapter"]
        assert adapter.endswith(f"mitigation/folds/{f}/adapters/lora-thesis")
    # a prompt suffix fits nothing: one audit serves every fold
    names = vconfig.variant_names(three)
    assert "world-clip~prompt-any" in names and not [n for n in names if n.startswith("world-clip~prompt-any~")]
    assert "world-clip~saner~fold2" in names and vconfig.image_model(three, "world-clip~saner~fold2") == "world-clip"


def _plan(workdir: Path) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                          "--cores", "2", "-n", "--quiet", "rules"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", run.stdout, re.M)}


def test_dry_run_plans_one_fit_per_fold_per_fitted_method(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    plans = {}
    for folds in (1, 3):
        config["mitigation"]["split"]["folds"] = folds
        (tmp_path / str(folds)).mkdir()
        (tmp_path / str(folds) / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
        plans[folds] = _plan(tmp_path / str(folds))
    one, three = plans[1], plans[3]
    for rule in ("split", "acquire", "label", "finetune", "bendvlm_reference", "saner_train", "prompt_array_train",
                 "compare"):
        assert one[rule] >= 1 and three[rule] == 3 * one[rule], rule
    assert "compare_folds" not in one and three["compare_folds"] == 1
    # folds 1 and 2 audit the 8 fitted methods on the 2 mitigation query sets; the prompt suffix and the base once
    fitted = [m for m in config["mitigation"]["methods"] if config["mitigation"]["methods"][m]["kind"] != "prompt"]
    extra = 2 * len(fitted) * len(config["mitigation"]["query_sets"])
    assert three["embed_queries"] == one["embed_queries"] + extra and three["metrics"] == one["metrics"] + extra


def _jobs(workdir: Path) -> list[str]:
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                          "--cores", "2", "-n"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return re.split(r"\n(?=\[.*\d{4}\]\n(?:local)?(?:rule|checkpoint) )", run.stdout)


def test_dry_run_with_parts_audits_each_folds_evaluation_part_and_fits_on_its_reference_part(tmp_path):
    """The default run with BendVLM fitting on one part of the world's test split and the audit on the
    other, over 2 folds: fold 1 reads both parts drawn with seed + 1, the base model included."""
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    config["datasets"].update({"world-ref": {"type": "part", "of": "world", "part": "reference"},
                               "world-eval": {"type": "part", "of": "world", "part": "evaluation"}})
    config["audit"]["datasets"] = ["world-eval"]
    config["mitigation"].update(dataset="world-eval")
    config["mitigation"]["methods"]["bendvlm"]["reference"] = "world-ref"
    config["mitigation"]["split"]["folds"] = 2
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    jobs = _jobs(tmp_path)
    res = "results/world"
    made = lambda rule, path: [j for j in jobs if f"{rule}:" in j and re.search(f"output: [^\n]*{re.escape(path)}", j)]
    for part in ("world-eval", "world-eval~fold1", "world-ref", "world-ref~fold1"):  # one manifest per part per fold
        assert len(made("checkpoint dataset_manifest", f"{res}/data/{part}/manifest.parquet")) == 1, part
    assert not made("checkpoint dataset_manifest", "~fold2") and not made("checkpoint dataset_manifest", "world-ref~fold0")
    # the base model is audited once per fold, each time on that fold's evaluation part
    for fold, part in enumerate(("world-eval", "world-eval~fold1")):
        for qset in config["mitigation"]["query_sets"]:
            assert len(made("rule metrics", f"{res}/metrics/{part}/world-clip/{qset}_summary.csv")) == 1
        compare = made("rule compare", f"{res}/mitigation/folds/{fold}/comparison.csv")
        assert len(compare) == 1 and f"{res}/metrics/{part}/world-clip/world_gender_summary.csv" in compare[0]
        other = "world-eval~fold1" if fold == 0 else "world-eval/"
        assert f"metrics/{other}" not in compare[0]  # base and methods compared on the same images
        quality = made("rule quality", f"{res}/mitigation/folds/{fold}/quality/world-clip.csv")
        assert len(quality) == 1 and f"{res}/data/{part}/manifest.parquet" in quality[0]
    # one BendVLM reference per fold, fitted on that fold's reference part
    refs = [j for j in jobs if "rule bendvlm_reference:" in j]
    assert len(refs) == 2
    for fold, part in enumerate(("world-ref", "world-ref~fold1")):
        ref = made("rule bendvlm_reference", f"{res}/mitigation/folds/{fold}/reference/bendvlm")
        assert len(ref) == 1 and f"{res}/data/{part}/manifest.parquet" in ref[0]
    assert len([j for j in jobs if "rule compare_folds:" in j]) == 1
