import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit.data import FAIRFACE_CLASSES, build_manifest, hub_parquet_manifest


def test_fairface_manifest_and_distribution(fairface_dir):
    manifest, dist, missing = build_manifest({"type": "fairface", "root": str(fairface_dir)})
    assert list(manifest.columns) == ["image_id", "path", "gender", "race", "age"]
    assert len(manifest) == 2 * 7 * 3 and missing.empty
    g = dist[dist.attribute == "gender"].set_index("class")
    assert g.loc["Male", "count"] == 21 and g.loc["Female", "percent"] == pytest.approx(50.0)
    # every FairFace class is listed in FairFace order, zero counts included
    assert dist[dist.attribute == "age"]["class"].tolist() == FAIRFACE_CLASSES["age"]
    assert dist.groupby("attribute")["percent"].sum().round(6).eq(100).all()


def test_header_whitespace_tolerated(fairface_dir, tmp_path):
    root = tmp_path / "ff"
    shutil.copytree(fairface_dir, root)
    csv = root / "fairface_label_val.csv"
    lines = csv.read_text().splitlines()
    lines[0] = " file, age ,gender, race,service_test "
    csv.write_text("\n".join(lines) + "\n")
    manifest, _, _ = build_manifest({"type": "fairface", "root": str(root)})
    assert len(manifest) == 42


def test_missing_column_named(fairface_dir, tmp_path):
    root = tmp_path / "ff"
    shutil.copytree(fairface_dir, root)
    csv = root / "fairface_label_val.csv"
    pd.read_csv(csv).drop(columns=["race"]).to_csv(csv, index=False)
    with pytest.raises(VlmbiasError, match=r"lacks column\(s\) \['race'\]"):
        build_manifest({"type": "fairface", "root": str(root)})


def test_missing_root_and_missing_images(fairface_dir, tmp_path):
    with pytest.raises(VlmbiasError, match="FairFace root not found"):
        build_manifest({"type": "fairface", "root": str(tmp_path / "nope")})
    root = tmp_path / "ff"
    shutil.copytree(fairface_dir, root)
    (root / "val" / "3.jpg").unlink()
    with pytest.raises(VlmbiasError, match="1 of 42 listed images are missing"):
        build_manifest({"type": "fairface", "root": str(root)})
    manifest, _, missing = build_manifest({"type": "fairface", "root": str(root)}, max_missing_fraction=0.1)
    assert len(manifest) == 41 and missing["image_id"].tolist() == ["val/3.jpg"]


def test_unknown_class_and_path_escape(fairface_dir, tmp_path):
    root = tmp_path / "ff"
    shutil.copytree(fairface_dir, root)
    csv = root / "fairface_label_val.csv"
    df = pd.read_csv(csv)
    df.loc[0, "gender"] = "Mle"
    df.to_csv(csv, index=False)
    with pytest.raises(VlmbiasError, match="unknown class.*Mle"):
        build_manifest({"type": "fairface", "root": str(root)})
    df.loc[0, "gender"] = "Male"
    df.loc[0, "file"] = "../../etc/passwd"
    df.to_csv(csv, index=False)
    with pytest.raises(VlmbiasError, match="relative paths inside"):
        build_manifest({"type": "fairface", "root": str(root)})


def test_labelled_folder_any_attributes(fairface_dir, tmp_path):
    labels = pd.read_csv(fairface_dir / "fairface_label_val.csv")
    labels = labels.rename(columns={"file": "image"})[["image", "gender"]]
    labels["glasses"] = ["yes", "no"] * (len(labels) // 2)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    manifest, dist, _ = build_manifest({"type": "labelled-folder", "root": str(fairface_dir),
                                        "csv": str(tmp_path / "labels.csv"), "file_column": "image"})
    assert set(dist["attribute"]) == {"gender", "glasses"}
    assert dist[dist.attribute == "glasses"]["class"].tolist() == ["no", "yes"]
    manifest, dist, _ = build_manifest({"type": "labelled-folder", "root": str(fairface_dir),
                                        "csv": str(tmp_path / "labels.csv"), "file_column": "image",
                                        "attributes": {"glasses": ["yes", "no", "sunglasses"]}})
    assert dist[dist.attribute == "glasses"]["count"].tolist() == [21, 21, 0]


def test_hub_labels_decoded_by_name(tmp_path, fairface_dir):
    """The hub stores race as integers in its own class order; decoding must go by name."""
    hub_race = ["White", "Black", "Indian", "East Asian", "Southeast Asian", "Middle Eastern", "Latino_Hispanic"]
    hub_gender = ["Male", "Female"]
    features = {"image": {"_type": "Image"},
                "age": {"names": FAIRFACE_CLASSES["age"], "_type": "ClassLabel"},
                "gender": {"names": hub_gender, "_type": "ClassLabel"},
                "race": {"names": hub_race, "_type": "ClassLabel"},
                "service_test": {"dtype": "bool", "_type": "Value"}}
    img = (fairface_dir / "val" / "1.jpg").read_bytes()
    table = pa.table({"image": [{"bytes": img, "path": "a.jpg"}, {"bytes": img, "path": "b.jpg"}],
                      "age": [3, 8], "gender": [1, 0], "race": [0, 3], "service_test": [True, False]})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    shard = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(table, shard)
    manifest = hub_parquet_manifest([shard], tmp_path / "images")
    assert manifest["race"].tolist() == ["White", "East Asian"]
    assert manifest["gender"].tolist() == ["Female", "Male"]
    assert manifest["age"].tolist() == ["20-29", "more than 70"]
    assert all(open(p, "rb").read() == img for p in manifest["path"])


def test_hub_offline_error_is_readable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VlmbiasError, match="needs network access"):
        build_manifest({"type": "fairface-hub", "padding": "0.25"})


def test_intersectional_attribute_from_config(fairface_dir):
    spec = {"type": "fairface", "root": str(fairface_dir), "intersections": {"gender_race": ["gender", "race"]}}
    manifest, dist, _ = build_manifest(spec)
    gr = dist[dist.attribute == "gender_race"]
    # every combination, gender's order outer, race's inner; the stand-in has 3 images per cell
    assert gr["class"].tolist()[:3] == ["Male|East Asian", "Male|Indian", "Male|Black"]
    assert len(gr) == 2 * 7 and gr["count"].tolist() == [3] * 14
    assert (manifest["gender_race"] == manifest["gender"] + "|" + manifest["race"]).all()


def test_intersection_unlabelled_component_and_errors():
    from vlmbias.audit.intersect import add_intersections

    m = pd.DataFrame({"image_id": ["a", "b", "c"], "path": "x", "gender": ["Female", "", "Male"],
                      "race": ["Black", "White", None]})
    classes = {"gender": ["Male", "Female"], "race": ["White", "Black"]}
    out, cls = add_intersections(m, classes, {"gr": ["gender", "race"]})
    assert [v if isinstance(v, str) else None for v in out["gr"]] == ["Female|Black", None, None]
    assert cls["gr"] == ["Male|White", "Male|Black", "Female|White", "Female|Black"]
    with pytest.raises(VlmbiasError, match=r"attribute\(s\) \['age'\] not in the dataset"):
        add_intersections(m, classes, {"ga": ["gender", "age"]})
    with pytest.raises(VlmbiasError, match="already has a column"):
        add_intersections(m, classes, {"race": ["gender", "race"]})
