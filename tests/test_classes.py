"""Class order (declared, else numeric-aware) and label normalisation of labelled folders."""
import logging
import random

import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit.data import build_manifest, class_order, classes_from_distribution
from vlmbias.cli import main

AGES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]


def test_natural_order_of_age_bins():
    shuffled = AGES[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(shuffled) != AGES  # as text: 0-2, 10-19, 20-29, 3-9, ...
    assert class_order(shuffled + ["", "3-9"]) == AGES
    assert class_order(["b", "A", "c"]) == ["A", "b", "c"]
    assert class_order(["old", "10-19", "unknown", "0-2"]) == ["0-2", "10-19", "old", "unknown"]
    assert class_order(AGES, declared=["more than 70", "0-2"]) == ["more than 70", "0-2", *AGES[1:-1]]


def _folder(root, rows, header="file,gender,age"):
    root.mkdir(parents=True, exist_ok=True)
    for r in rows:
        (root / r.split(",")[0]).write_bytes(b"x")
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return {"type": "labelled-folder", "root": str(root), "csv": "labels.csv"}


def test_labelled_folder_ages_in_natural_order_and_declared_order(tmp_path):
    rows = [f"{i}.jpg,Male,{a}" for i, a in enumerate(reversed(AGES))]
    spec = _folder(tmp_path / "f", rows)
    _, dist, _ = build_manifest(spec)
    assert classes_from_distribution(dist)["age"] == AGES
    _, dist, _ = build_manifest({**spec, "classes": {"age": list(reversed(AGES))}})
    assert classes_from_distribution(dist)["age"] == list(reversed(AGES))
    with pytest.raises(VlmbiasError, match=r"classes are declared for \['sex'\]"):
        build_manifest({**spec, "classes": {"sex": ["a"]}})


def test_case_and_space_variants_are_merged_with_a_warning(tmp_path, caplog):
    rows = ["1.jpg,Female,0-2", "2.jpg,female,0-2", "3.jpg,Female,3-9", "4.jpg,Male,3-9", "5.jpg,male ,3-9",
            "6.jpg,MALE,3-9", "7.jpg,Male,3-9"]
    spec = _folder(tmp_path / "f", rows)
    with caplog.at_level(logging.WARNING, logger="vlmbias"):
        manifest, dist, _ = build_manifest(spec)
    assert classes_from_distribution(dist)["gender"] == ["Female", "Male"]
    assert dist.set_index(["attribute", "class"]).loc[("gender", "Female"), "count"] == 3
    assert dist.set_index(["attribute", "class"]).loc[("gender", "Male"), "count"] == 4
    warning = [r.getMessage() for r in caplog.records if "merged" in r.getMessage()]
    assert len(warning) == 1 and "attribute 'gender'" in warning[0]
    assert "'Female', 'female' -> 'Female'" in warning[0] and "'Male', 'MALE', 'male ' -> 'Male'" in warning[0]
    # a declared spelling wins, even over the majority
    manifest, dist, _ = build_manifest({**spec, "attributes": {"gender": ["male", "female"], "age": AGES}})
    assert classes_from_distribution(dist)["gender"] == ["male", "female"]
    assert manifest["gender"].value_counts().to_dict() == {"male": 4, "female": 3}


def test_consistent_space_after_commas_is_no_warning(tmp_path, caplog):
    spec = _folder(tmp_path / "f", ["1.jpg, Male, 0-2", "2.jpg, Female, 3-9"], header="file, gender, age")
    with caplog.at_level(logging.WARNING, logger="vlmbias"):
        manifest, dist, _ = build_manifest(spec)
    assert manifest["gender"].tolist() == ["Male", "Female"] and not caplog.records


def test_strict_labels_refuses_variants(tmp_path):
    spec = _folder(tmp_path / "f", ["1.jpg,Female,0-2", "2.jpg,female,0-2"])
    with pytest.raises(VlmbiasError, match=r"attribute 'gender' has labels that differ only in case or surrounding "
                                           r"space \('Female', 'female' -> 'Female'\)"):
        build_manifest({**spec, "strict_labels": True})


def test_cli_tables_follow_natural_order_and_strict_flag(tiny_hf, fairface_dir, tmp_path, capsys):
    labels = pd.read_csv(fairface_dir / "fairface_label_val.csv")
    labels["gender"] = [g.lower() if i % 3 == 1 else g for i, g in enumerate(labels["gender"])]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    base = ["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(fairface_dir), "--csv", str(tmp_path / "labels.csv"),
            "--cache", str(tmp_path / "c"), "--workers", "0", "--n-boot", "20", "--query", "a doctor", "--k", "42",
            "--attributes", "age", "gender", "--output", str(tmp_path / "out")]
    assert main(base) == 0
    out, err = capsys.readouterr()
    assert "labels that differ only in case or surrounding space are merged" in err
    classes = pd.read_csv(tmp_path / "out" / "classes.csv", keep_default_na=False)
    assert classes.loc[classes["attribute"] == "age", "class"].tolist() == AGES
    assert classes.loc[classes["attribute"] == "gender", "class"].tolist() == ["Female", "Male"]
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and "%" in line]
    assert rows[:3] == ["0-2", "3-9", "10-19"]
    assert main(base + ["--strict-labels"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "differ only in case" in err and "Traceback" not in err


def test_config_declares_class_order_and_strictness(tmp_path):
    from vlmbias.config import validate

    def config(**dataset):
        return {"datasets": {"mine": {"type": "labelled-folder", "root": "photos", "csv": "labels.csv", **dataset}},
                "models": {"m": {"backend": "hf", "name": "org/model"}}, "query_sets": {"q": {"queries": ["a doctor"]}}}

    validate(config(classes={"age": AGES}, strict_labels=True))
    with pytest.raises(VlmbiasError, match="at datasets.mine.strict_labels: 'yes' is not of type 'boolean'"):
        validate(config(strict_labels="yes"))
    with pytest.raises(VlmbiasError, match="at datasets.mine.classes.age"):
        validate(config(classes={"age": []}))
