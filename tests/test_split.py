"""The held-out protocol (issue 11): the concept split is seeded, disjoint and recorded, and what a
method fits on (projection pairs, acquired keywords, BendVLM references) never holds a held-out concept."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vlmbias import VlmbiasError
from vlmbias import config as vconfig
from vlmbias.audit import metrics as m
from vlmbias.encoders.projection import projection_for
from vlmbias.mitigate.acquire import resolve_spec
from vlmbias.mitigate.bendvlm import fitting_concept_rows
from vlmbias.mitigate.compare import compare
from vlmbias.mitigate.split import concept_split, main

REPO = Path(__file__).resolve().parents[1]


def _default():
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    vconfig.validate(config)
    return config


def _qsets(n_gender=6, n_race=3):
    q = lambda names: {"queries": [{"text": f"a {c}", "concept": c} for c in names]}
    return {"g": q([f"g{i}" for i in range(n_gender)]), "r": q([f"r{i}" for i in range(n_race)])}


def test_split_is_seeded_disjoint_and_stratified():
    a = concept_split(_qsets(), {"held_out_fraction": 0.4, "seed": 0})
    assert a.equals(concept_split(_qsets(), {"held_out_fraction": 0.4, "seed": 0}))  # same seed, same split
    held = a[a.split == "held_out"]
    # round(0.4 x 6) = 2 gender and round(0.4 x 3) = 1 race concept held out; the rest fit
    assert held.groupby("query_set").size().to_dict() == {"g": 2, "r": 1}
    assert set(a.split) == {"fitting", "held_out"}
    assert not set(held.concept) & set(a.loc[a.split == "fitting", "concept"])
    others = [concept_split(_qsets(), {"held_out_fraction": 0.4, "seed": s}) for s in range(1, 6)]
    assert any(not o.equals(a) for o in others)  # the seed matters


def test_explicit_held_out_and_bad_specs():
    t = concept_split(_qsets(), {"held_out": ["g1", "r2"]})
    assert sorted(t.loc[t.split == "held_out", "concept"]) == ["g1", "r2"]
    with pytest.raises(VlmbiasError, match=r"names concept\(s\) \['x'\] that no mitigation query set has"):
        concept_split(_qsets(), {"held_out": ["x"]})
    with pytest.raises(VlmbiasError, match="either held_out .* or held_out_fraction"):
        concept_split(_qsets(), {"held_out": ["g1"], "held_out_fraction": 0.5})
    single = concept_split(_qsets(n_race=1), {"held_out_fraction": 0.4, "seed": 0})  # one race concept: it fits
    assert single.loc[single.query_set == "r", "split"].tolist() == ["fitting"]
    with pytest.raises(VlmbiasError, match="no concept can be held out"):
        concept_split(_qsets(1, 1), {"held_out_fraction": 0.4, "seed": 0})
    assert set(concept_split(_qsets(1, 1), {"held_out": []})["split"]) == {"fitting"}  # no protocol, by choice
    with pytest.raises(VlmbiasError, match="holds out every concept"):
        concept_split(_qsets(2, 2), {"held_out": ["g0", "g1", "r0", "r1"]})


def test_split_is_written(tmp_path):
    import json

    out = tmp_path / "split.csv"
    main(["--query-sets-json", json.dumps(list(_qsets().items())), "--spec-json", json.dumps({"held_out": ["g0"]}),
          "--out", str(out)])
    t = pd.read_csv(out)
    assert list(t.columns) == ["query_set", "query_id", "query", "concept", "split"]
    assert t.set_index("concept").loc["g0", "split"] == "held_out" and (t.split == "fitting").sum() == 8
    with pytest.raises(VlmbiasError, match="list of \\[name, query set block\\] pairs"):
        main(["--query-sets-json", json.dumps(_qsets()), "--spec-json", "null", "--out", str(out)])


def test_written_split_keeps_the_configs_query_set_order(tmp_path):
    """The rule hands the query sets over in mitigation.query_sets order: the order decides which set
    owns a shared concept and how the seeded draw runs, so a reordered (e.g. key-sorted) set would give
    another split than the one acquisition and fitting exclude."""
    import json

    q = lambda names: {"queries": [{"text": f"a {c}", "concept": c} for c in names]}
    qsets = {"table": q(["doctor", "nurse", "pilot", "chef", "judge"]), "gender": q(["doctor", "nurse", "baker"])}
    spec = {"held_out_fraction": 0.4, "seed": 0}
    as_configured = concept_split(qsets, spec)
    assert not as_configured.equals(concept_split(dict(sorted(qsets.items())), spec))  # the order matters
    main(["--query-sets-json", json.dumps(list(qsets.items()), sort_keys=True), "--spec-json", json.dumps(spec),
          "--out", str(tmp_path / "split.csv")])
    assert pd.read_csv(tmp_path / "split.csv").equals(as_configured)


def test_default_config_split_and_schema():
    config = _default()
    fit, held = vconfig.fitting_concepts(config), vconfig.held_out_concepts(config)
    # seed 0, stated in config.yaml and docs/mitigation.md: both attributes held out, the race half with
    # three 0.7 race plants (issue 11: "a CEO" alone carried no race plant in English)
    assert held == ["dentist", "nurse", "pharmacist", "pilot", "scientist"]
    assert not set(fit) & set(held) and len(fit) == 8
    from vlmbias.world.spec import resolve_spec as resolve_world

    world = resolve_world(config["world"])["planted_resolved"]
    assert all(max(world[f"{c}|en"]["race"].values()) >= config["calibration"]["strong"]["race"]
               for c in ("dentist", "pharmacist", "pilot"))
    config["mitigation"]["split"] = {"held_out_fraction": 1.5}
    with pytest.raises(VlmbiasError, match="at mitigation.split"):
        vconfig.validate(config)


class _Recorder:
    """An encoder stand-in that records every text it is asked to encode."""

    def __init__(self):
        self.texts = []

    def encode_texts(self, texts):
        self.texts += list(texts)
        rng = np.random.default_rng(len(self.texts))
        x = rng.normal(size=(len(texts), 16))
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fitted_methods_never_see_a_held_out_concept():
    config = _default()
    held = vconfig.held_out_concepts(config)
    # projection: the calibration pairs are built from the fitting concepts only
    spec = vconfig.query_set_spec(config, "world-clip~projection", "world_gender")["transform"]["projection"]
    assert spec["concepts"] == vconfig.fitting_concepts(config)
    enc = _Recorder()
    projection_for(enc, spec, spec["concepts"])
    pair_texts = [t for t in enc.texts if t.split()[-1] not in {"man", "woman", "person"}]
    assert pair_texts and not [t for t in pair_texts for c in held if t.endswith(" " + c)]
    # LoRA: the acquired keywords (and so labels and the fine-tuning set) leave the held-out concepts out
    _, items = resolve_spec(vconfig.acquire_spec(config))
    assert {i["concept"] for i in items} & set(held) == set()
    assert {"doctor", "teacher"} <= {i["concept"] for i in items}
    # BendVLM / SANER: a fitting set's concept column keeps the fitting concepts and the concept-free rows
    ref = pd.DataFrame({"concept": ["doctor", "nurse", "", None], "path": ["a", "b", "c", "d"],
                        "gender": ["Male", "Female", "Male", "Female"]})
    rows = fitting_concept_rows(ref, vconfig.fitting_concepts(config), "test")
    assert rows["path"].tolist() == ["a", "c", "d"]
    assert fitting_concept_rows(ref.drop(columns="concept"), ["doctor"], "test")["path"].tolist() == list("abcd")


def test_acquire_rejects_excluding_everything():
    with pytest.raises(VlmbiasError, match="every keyword's concept is excluded"):
        resolve_spec({"source": "folder", "keywords": ["a nurse"], "exclude_concepts": ["nurse"]})


def _audit(query_id, genders):
    r = pd.DataFrame({"model": "m", "dataset": "d", "query_set": "s", "query_id": query_id, "query": query_id,
                      "rank": range(1, len(genders) + 1), "gender": genders})
    dist = pd.DataFrame({"attribute": "gender", "class": ["Male", "Female"], "count": [50, 50],
                         "percent": [50.0, 50.0]})
    classes, summary = m.audit_tables(r, dist, [20], n_boot=200)
    return summary, classes


def _both(*audits):
    return tuple(pd.concat([a[i] for a in audits], ignore_index=True) for i in (0, 1))


def test_compare_emits_both_splits_with_intervals():
    base = _both(_audit("a doctor", ["Male"] * 20), _audit("a nurse", ["Female"] * 20))
    # fitted: fixes the fitting concept (doctor), leaves the held-out one (nurse) as it was
    after = _both(_audit("a doctor", ["Male", "Female"] * 10), _audit("a nurse", ["Female"] * 20))
    split = pd.DataFrame({"query_set": "s", "query_id": ["a doctor", "a nurse"], "split": ["fitting", "held_out"]})
    table, summary = compare(base, {"fitted": after}, split)
    assert set(table["split"]) == {"fitting", "held_out"}
    s = summary[summary.metric == "tvd"].set_index("split")
    assert s.loc["fitting", "mean_before"] == pytest.approx(0.5) and s.loc["fitting", "mean_after"] == pytest.approx(0.0)
    assert s.loc["held_out", "mean_after"] == pytest.approx(0.5) and s.loc["held_out", "improved"] == 0
    assert (s["mean_after_low"] <= s["mean_after"]).all() and (s["mean_after"] <= s["mean_after_high"]).all()
    assert s.loc["fitting", "improved"] == 1
    with pytest.raises(VlmbiasError, match="in no split"):
        compare(base, {"fitted": after}, split.iloc[:1])


def test_saner_training_captions_are_fitting_concepts_with_their_own_gender():
    from vlmbias.world.generate import gendered_captions

    corpus = pd.DataFrame({
        "image_id": list("abcdef"), "path": list("abcdef"),
        "caption": ["portrait of a doctor", "a nurse at work", "a doctor", "a male person", "somebody", "医生"],
        "lang": ["en", "en", "en", "en", "en", "zh"], "concept": ["doctor", "nurse", "doctor", None, None, "doctor"],
        "split": ["train", "train", "heldout", "train", "train", "train"],
        "gender": ["Female", "Female", "Male", "Male", "Male", "Male"]})
    names = pd.DataFrame({"concept": ["doctor", "nurse", "doctor"], "lang": ["en", "en", "zh"],
                          "name": ["a doctor", "a nurse", "医生"]})
    rows = fitting_concept_rows(gendered_captions(corpus, names), ["doctor"], "test")
    # the train doctor image with its own gender word, and the group caption that names a gender;
    # never the held-out concept (nurse), the heldout split, or a caption naming no gender
    assert rows["caption"].tolist() == ["portrait of a female doctor", "a male person"]


def test_new_kinds_validate_and_reuse_the_base_image_embeddings():
    config = _default()
    kinds = {m: s["kind"] for m, s in config["mitigation"]["methods"].items()}
    assert {"bendvlm", "saner", "prompt-array"} <= set(kinds.values())
    for method, kind in kinds.items():
        if kind in ("bendvlm", "saner", "prompt-array"):
            assert vconfig.image_model(config, f"world-clip~{method}") == "world-clip"
            assert vconfig.method_inputs(config, method)
        if kind in ("bendvlm", "saner"):
            assert kind in vconfig.query_set_spec(config, f"world-clip~{method}", "world_gender")["transform"]
        if kind == "prompt-array":  # its text encoder changes: the prompts ride in the model spec
            assert vconfig.model_spec(config, f"world-clip~{method}")["prompts"] == vconfig.prompts_dir(config, method)
    config["mitigation"]["methods"]["bendvlm"]["n_neighbours"] = 5
    with pytest.raises(VlmbiasError, match="n_neighbours"):
        vconfig.validate(config)
    config = _default()
    config["mitigation"]["methods"]["saner"]["alpha"] = 0
    with pytest.raises(VlmbiasError, match="at mitigation.methods.saner"):
        vconfig.validate(config)


def test_a_lora_method_can_balance_over_gender_and_race(tmp_path):
    from vlmbias.mitigate.balance import main as balance

    rows = [{"image_id": f"{c}{g}{r}{i}", "path": "x", "concept": c, "gender": g, "race": r}
            for c in ("doctor", "teacher") for g in ("Male", "Female") for r in ("Black", "White")
            for i in range(1 + (g == "Male") * 3 + (r == "White"))]           # skewed: many male, many White
    pd.DataFrame(rows).to_parquet(tmp_path / "labels.parquet")
    balance(["--labels", str(tmp_path / "labels.parquet"), "--out", str(tmp_path / "b.parquet"),
             "--spec-json", '{"per": "concept", "attributes": ["gender", "race"], "seed": 0}'])
    b = pd.read_parquet(tmp_path / "b.parquet")
    # every concept x gender x race cell downsampled to the smallest (Female/Black: 1 image)
    assert b.groupby(["concept", "gender", "race"]).size().eq(1).all() and len(b) == 8
    config = _default()
    gr = [m for m, s in config["mitigation"]["methods"].items() if s.get("balanced")]
    assert gr and config["mitigation"]["methods"][gr[0]]["balanced"]["attributes"] == ["gender", "race"]
    assert "balanced" not in vconfig.finetune_spec(config, gr[0])


class _OneHot:
    """Texts map to one-hot vectors by keyword: each concept (and 'man'/'woman') has its axis."""
    AXES = ["doctor", "nurse", "chef", "man", "woman"]

    def encode_texts(self, texts):
        out = np.zeros((len(texts), len(self.AXES)), np.float32)
        for i, t in enumerate(texts):
            out[i, [j for j, w in enumerate(self.AXES) if t.split()[-1] == w]] = 1
        return out


def test_quality_gives_caption_metrics_per_concept_split_and_applies_text_transforms():
    from vlmbias.mitigate.quality import TransformedText, evaluate

    concepts = ["doctor", "nurse", "chef"]
    corpus = pd.DataFrame({"concept": concepts * 2, "caption": [f"a photo of a {c}" for c in concepts] * 2,
                           "path": ["x"] * 6})
    emb = _OneHot().encode_texts(corpus["caption"].tolist())
    emb[3] = _OneHot().encode_texts(["a photo of a nurse"])[0]           # one doctor image looks like a nurse
    images = _OneHot().encode_texts(["a man", "a woman"])
    labels = pd.DataFrame({"gender": ["Male", "Female"]})
    t = evaluate(_OneHot(), "m", images, labels, ["gender"], "a photo of a {}", corpus, 2, corpus_emb=emb,
                 splits={"doctor": "fitting", "nurse": "held_out"})
    acc = t[t.metric == "concept_accuracy"].set_index("split")
    assert acc.loc["fitting", "value"] == 0.5 and acc.loc["held_out", "value"] == 1.0
    assert acc.loc["other", "value"] == 1.0 and acc.loc["all", "n"] == 6
    assert t.loc[t.metric == "zero_shot_accuracy", "value"].item() == 1.0
    # a transform that collapses every text onto one axis breaks attributed prompts: quality shows it
    squash = TransformedText(_OneHot(), None)
    squash.fn = lambda x: np.tile(np.eye(5, dtype=np.float32)[:1], (len(x), 1))
    t2 = evaluate(squash, "m~squash", images, labels, ["gender"], "a photo of a {}", None, 2)
    assert t2.loc[t2.metric == "zero_shot_accuracy", "value"].item() == 0.5


def test_quality_transform_is_the_projection_or_saner_block():
    config = _default()
    assert set(vconfig.quality_transform(config, "world-clip~projection")) == {"projection"}
    assert set(vconfig.quality_transform(config, "world-clip~saner")) == {"saner"}
    bend = vconfig.quality_transform(config, "world-clip~bendvlm")  # per text, with its fitting-split references
    assert set(bend) == {"bendvlm"} and bend["bendvlm"]["reference"] == vconfig.reference_dir(config, "bendvlm")
    assert vconfig.quality_transform(config, "world-clip~prompt-array") == {}  # its prompts live in the encoder
    assert "prompts" in vconfig.model_spec(config, "world-clip~prompt-array")  # ... that quality loads
    assert vconfig.quality_transform(config, "world-clip") == {}


def test_leaderboard_sets_held_out_against_fitting(tmp_path):
    from vlmbias.mitigate.compare import leaderboard
    from vlmbias.plots import plot_pareto

    base = _both(_audit("a doctor", ["Male"] * 20), _audit("a nurse", ["Female"] * 20))
    after = _both(_audit("a doctor", ["Male", "Female"] * 10), _audit("a nurse", ["Female"] * 15 + ["Male"] * 5))
    split = pd.DataFrame({"query_set": "s", "query_id": ["a doctor", "a nurse"], "split": ["fitting", "held_out"]})
    _, summary = compare(base, {"fitted": after}, split)
    quality = pd.DataFrame({"model": ["m", "m~fitted"], "metric": "zero_shot_accuracy", "attribute": "gender",
                            "split": "all", "value": [0.9, 0.8], "low": [0.85, 0.75], "high": [0.95, 0.85], "n": 100})
    attributed = pd.DataFrame({"model": ["m", "m~fitted"] * 2, "metric": "attributed_query_share@10",
                               "attribute": "gender", "split": ["held_out"] * 2 + ["fitting"] * 2,
                               "value": [0.95, 0.7, 0.9, 0.6], "low": 0.5, "high": 1.0, "n": 60})
    board = leaderboard(summary, pd.concat([quality, attributed]), 20).set_index("method")
    assert board.loc["fitted", "attributed_gender_held_out"] == 0.7  # the held-out row, not the fitting one
    assert board.loc["base", "attributed_gender_held_out"] == 0.95
    assert board.loc["fitted", "gender_tvd_fitting"] == pytest.approx(0.0)
    assert board.loc["fitted", "gender_tvd_held_out"] == pytest.approx(0.25)
    # in-sample the method removed 0.5 of TVD, held out 0.25: the fitting number overstated it by 0.25
    assert board.loc["fitted", "gender_overstated"] == pytest.approx(0.25)
    assert board.loc["base", "gender_overstated"] == pytest.approx(0.0)
    assert board.loc["fitted", "zero_shot_gender"] == 0.8
    out = plot_pareto(board.reset_index(), tmp_path / "p.png", x="zero_shot_gender", y="gender_tvd_held_out")
    assert out.is_file()
