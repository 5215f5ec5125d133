"""Published dataset layouts (UTKFace, CelebA, FACET, SocialCounterfactuals) read from generated stand-ins."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.audit.data import build_manifest
from vlmbias.audit.embed import _ImageFiles
from vlmbias.audit.published import age_bin, parse_utkface_name
from vlmbias.testing import (UTKFACE_BAD_NAMES, make_celeba_folder, make_facet_folder,
                             make_socialcounterfactuals_folder, make_utkface_folder, make_wds_utkface_folder)


def test_utkface_names_ages_and_malformed_skips(tmp_path):
    root = make_utkface_folder(tmp_path / "UTKFace")
    manifest, dist, skipped = build_manifest({"type": "utkface", "root": str(root)})
    assert len(manifest) == 30
    assert sorted(skipped["image_id"]) == sorted(UTKFACE_BAD_NAMES)
    assert set(skipped["reason"]) == {"malformed UTKFace file name (expected age_gender_race_date)"}
    # gender 1 = Female, race 3 = Indian; age 25 -> FairFace's 20-29 bin
    row = manifest.set_index("image_id").loc[[i for i in manifest.image_id if i.startswith("25_1_3_")][0]]
    assert (row.gender, row.race, row.age) == ("Female", "Indian", "20-29")
    race = dist[dist.attribute == "race"]
    assert race["class"].tolist() == ["White", "Black", "Asian", "Indian", "Others"]
    assert race["count"].tolist() == [6] * 5
    age = dist[dist.attribute == "age"].set_index("class")["count"]
    assert (age["0-2"], age["20-29"], age["more than 70"], age["3-9"]) == (10, 10, 10, 0)


def test_utkface_parsing_by_hand():
    assert parse_utkface_name("9_0_4_20170110225331596.jpg.chip.jpg") == (9, "Male", "Others")
    assert parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg") is None
    assert parse_utkface_name("20_2_0_20170116174525125.jpg") is None  # gender code 2
    assert [age_bin(a) for a in (0, 2, 3, 19, 20, 69, 70, 101)] == [
        "0-2", "0-2", "3-9", "10-19", "20-29", "60-69", "more than 70", "more than 70"]


def test_utkface_all_malformed_is_an_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x_y.jpg")
    with pytest.raises(VlmbiasError, match="none of its 1 entries is usable"):
        build_manifest({"type": "utkface", "root": str(tmp_path)})


def test_celeba_split_gender_and_partition_gap(tmp_path):
    root = make_celeba_folder(tmp_path / "celeba", n=12)
    manifest, dist, skipped = build_manifest({"type": "celeba", "root": str(root), "split": "test",
                                              "attributes": ["Eyeglasses"]})
    # partitions cycle 0,1,2 over 000001..000011; 000012 has none -> listed, not guessed
    assert manifest["image_id"].tolist() == ["000003.jpg", "000006.jpg", "000009.jpg"]
    assert skipped["image_id"].tolist() == ["000012.jpg"]
    assert skipped["reason"].tolist() == ["not in list_eval_partition.txt"]
    # Male is +1 for even positions (000001, 000003, ...); Eyeglasses every third
    assert manifest["gender"].tolist() == ["Male", "Female", "Male"]
    assert manifest["Eyeglasses"].tolist() == ["-1", "-1", "-1"]
    assert dist[dist.attribute == "Eyeglasses"]["class"].tolist() == ["1", "-1"]
    train, _, _ = build_manifest({"type": "celeba", "root": str(root), "split": "train"})
    assert train["image_id"].tolist() == ["000001.jpg", "000004.jpg", "000007.jpg", "000010.jpg"]
    assert train["gender"].tolist() == ["Male", "Female", "Male", "Female"]


def test_celeba_malformed_line_named(tmp_path):
    root = make_celeba_folder(tmp_path / "celeba", n=6)
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("-1", "0", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VlmbiasError, match=r"list_attr_celeba.txt line 5: expected a file name and 4 value"):
        build_manifest({"type": "celeba", "root": str(root)})
    with pytest.raises(VlmbiasError, match="CelebA split 'dev'"):
        build_manifest({"type": "celeba", "root": str(root), "split": "dev"})


def test_facet_one_item_per_person_with_boxes(tmp_path):
    root = make_facet_folder(tmp_path / "facet")
    manifest, dist, skipped = build_manifest({"type": "facet", "root": str(root)})
    assert skipped.empty
    m = manifest.set_index("image_id")
    assert list(m.index) == ["sa_1.jpg#1", "sa_1.jpg#2", "sa_2.jpg#3", "sa_3.jpg#4"]
    assert m.loc["sa_1.jpg#1", "crop"] == "0,0,40,40" and m.loc["sa_1.jpg#2", "crop"] == "40,0,40,40"
    def labels(col):
        return [v if isinstance(v, str) else None for v in m[col]]
    assert labels("gender") == ["masc", "fem", "fem", None]          # `na` -> unlabelled
    assert labels("skin_tone") == ["9", "2", None, "6"]              # majority vote; a tie -> unlabelled
    assert labels("age") == ["middle", "young", "older", None]
    g = dist[dist.attribute == "gender"]
    assert g["class"].tolist() == ["masc", "fem", "non_binary"] and g["count"].tolist() == [1, 2, 0]
    # the two persons of one photo are embedded from their own boxes
    ds = _ImageFiles(manifest["path"].tolist(), lambda im: np.asarray(im), 10**6, manifest["crop"].tolist())
    left, right = ds[0][1], ds[1][1]
    assert left.shape == right.shape == (40, 40, 3)
    assert left.mean() < 60 < 190 < right.mean()
    visible, _, _ = build_manifest({"type": "facet", "root": str(root), "require_visible": ["face"]})
    assert "sa_2.jpg#3" not in set(visible["image_id"]) and len(visible) == 3
    shown, _, _ = build_manifest({"type": "facet", "root": str(root), "exclude_minimal": True})
    assert shown["image_id"].tolist() == visible["image_id"].tolist()


def test_facet_bad_box_and_missing_image(tmp_path):
    root = make_facet_folder(tmp_path / "facet")
    csv = root / "annotations" / "annotations.csv"
    df = pd.read_csv(csv)
    df.loc[2, "bounding_box"] = '{"x": 1, "y": 2}'
    df.to_csv(csv, index=False)
    with pytest.raises(VlmbiasError, match=r"annotations.csv line 4: bounding box is not"):
        build_manifest({"type": "facet", "root": str(root)})
    df.loc[2, "bounding_box"] = "{'x': 1, 'y': 2, 'width': 3, 'height': 4}"  # a Python dict literal reads too
    df.to_csv(csv, index=False)
    (root / "imgs_1" / "sa_3.jpg").unlink()
    with pytest.raises(VlmbiasError, match="1 of 4 listed images are missing"):
        build_manifest({"type": "facet", "root": str(root)})
    manifest, _, skipped = build_manifest({"type": "facet", "root": str(root)}, max_missing_fraction=0.5)
    assert manifest.set_index("image_id").loc["sa_2.jpg#3", "crop"] == "1,2,3,4"
    assert skipped["image_id"].tolist() == ["sa_3.jpg#4"]


def test_facet_grid_tiles_show_the_person(tmp_path):
    from vlmbias.plots.grids import _tile, image_grid

    root = make_facet_folder(tmp_path / "facet")
    manifest, _, _ = build_manifest({"type": "facet", "root": str(root)})
    photo, (left, right) = manifest["path"].iat[0], manifest["crop"].iloc[:2]
    # sa_1.jpg: dark left half (person 1), light right half (person 2); the whole photo averages between
    tiles = [np.asarray(_tile(photo, 32, None, crop=c).convert("L"), dtype=float).mean() for c in (left, right, None)]
    assert tiles[0] < 60 < tiles[2] < 190 < tiles[1]
    r = manifest.iloc[:2].assign(query_id="q", query="a person", rank=[1, 2], score=0.5)
    assert image_grid(r, "q", 2, tmp_path / "g.png", ncols=2, label_columns=("gender",), thumb=32).is_file()


def test_socialcounterfactuals_sets_attributes_and_skipped_row(tmp_path):
    root = make_socialcounterfactuals_folder(tmp_path / "scf")
    spec = {"type": "socialcounterfactuals", "root": str(root), "image_dir": str(tmp_path / "images"),
            "intersections": {"race_gender": ["race", "gender"]}}
    manifest, dist, skipped = build_manifest(spec)
    # 2 occupations x (12 race-gender + 4 physical-gender + 6 physical-race) images, one without bytes
    assert len(manifest) == 43 and len(skipped) == 1
    assert skipped["reason"].tolist() == ["no image bytes in the parquet row"]
    assert skipped["image_id"].iat[0].endswith("/Latino_female") and skipped["path"].iat[0].endswith(".parquet")
    m = manifest.set_index("image_id")
    assert m["set_type"].value_counts().to_dict() == {"race-gender": 23, "physical-race": 12, "physical-gender": 8}
    assert m["counterfactual_set"].nunique() == 6
    # the attribute a set does not vary is unlabelled; the caption names the two it does
    row = m[(m.set_type == "physical-gender") & (m.physical == "obese") & (m.gender == "female")].iloc[0]
    assert pd.isna(row["race"]) and row["caption"].startswith("A photo of an obese female")
    race = dist[dist.attribute == "race"]
    assert race["class"].tolist() == ["White", "Black", "Indian", "Asian", "Middle Eastern", "Latino"]
    # White: 2 race-gender sets x 2 genders + 2 physical-race sets x 2 physical values
    assert race.set_index("class")["count"].to_dict()["White"] == 8
    assert dist[dist.attribute == "physical"].set_index("class")["count"].to_dict() == {
        "skinny": 4, "young": 6, "obese": 4, "tattooed": 0, "old": 6}
    with Image.open(m.iloc[0]["path"]) as im:
        assert im.size == (32, 32)
    # intersectional MaxSkew within the race-gender sets: a top 4 of two White|male and two
    # White|female images against the uniform 1/12 -> max share 1/2, MaxSkew = ln(0.5 * 12) = ln 6
    from vlmbias.audit.metrics import class_counts, max_skew, uniform_target

    classes = dist[dist.attribute == "race_gender"]["class"].tolist()
    assert len(classes) == 12 and classes[:2] == ["White|male", "White|female"]
    top = m[m.race_gender.isin(["White|male", "White|female"])]["race_gender"]
    assert len(top) == 4 and m["race_gender"].notna().sum() == 23  # physical sets: unlabelled
    assert max_skew(class_counts(top, classes), uniform_target(classes)) == pytest.approx(np.log(6))
    only, _, _ = build_manifest({**spec, "set_types": ["physical-gender"], "intersections": None})
    assert set(only["set_type"]) == {"physical-gender"} and "race" not in only.columns and len(only) == 8


def test_socialcounterfactuals_bad_rows_named(tmp_path):
    import pyarrow.parquet as pq

    root = make_socialcounterfactuals_folder(tmp_path / "scf")
    shard = root / "data" / "train-00001-of-00002.parquet"
    table = pq.read_table(shard).to_pylist()
    table[2]["a2"] = "nonbinary"
    pq.write_table(pa_table(table, pq.read_schema(shard)), shard)
    spec = {"type": "socialcounterfactuals", "root": str(root), "image_dir": str(tmp_path / "images")}
    with pytest.raises(VlmbiasError, match=r"train-00001-of-00002.parquet row 3: gender value 'nonbinary' is not one of"):
        build_manifest(spec)
    # a release with more values than documented: declare them
    manifest, dist, _ = build_manifest({**spec, "classes": {"gender": ["male", "female", "nonbinary"]}})
    assert dist[dist.attribute == "gender"]["class"].tolist() == ["male", "female", "nonbinary"]
    table[2]["a2"], table[3]["a1_type"] = "female", "religion"
    pq.write_table(pa_table(table, pq.read_schema(shard)), shard)
    with pytest.raises(VlmbiasError, match=r"row 4: attribute type 'religion' is not one of"):
        build_manifest(spec)
    table[3]["a1_type"] = "physical"
    table[1]["a1"], table[1]["a2"] = table[0]["a1"], table[0]["a2"]  # the same image twice in one set
    pq.write_table(pa_table(table, pq.read_schema(shard)), shard)
    with pytest.raises(VlmbiasError, match=r"row 2: set '.*' already has an image for skinny, male"):
        build_manifest(spec)


def pa_table(rows, schema):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)


def test_socialcounterfactuals_hub_reads_the_fetched_copy(tmp_path, monkeypatch):
    import huggingface_hub

    root = make_socialcounterfactuals_folder(tmp_path / "snapshot")
    asked = {}

    def fake_download(repo, **kw):  # offline: the hub client's answer is the local copy's folder
        asked.update(repo=repo, **kw)
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    manifest, _, skipped = build_manifest({"type": "socialcounterfactuals-hub", "set_types": ["race-gender"]})
    assert asked["repo"] == "Intel/SocialCounterfactuals" and asked["allow_patterns"] == ["data/train-*.parquet"]
    assert len(manifest) == 23 and len(skipped) == 1
    assert all(p.startswith(str(root / "images")) for p in manifest["path"])
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VlmbiasError, match="needs network access"):
        build_manifest({"type": "socialcounterfactuals-hub", "cache_dir": str(tmp_path / "empty")})


def test_utkface_hub_webdataset_decoded_by_its_class_names(tmp_path, monkeypatch):
    import huggingface_hub

    root = make_wds_utkface_folder(tmp_path / "wds")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: str(root))
    manifest, dist, skipped = build_manifest({"type": "utkface-hub", "image_dir": str(tmp_path / "img")})
    # 2 shards x 10 samples, one without its label vector (listed)
    assert len(manifest) == 19 and skipped["image_id"].tolist() == ["1/s00010009"]
    assert skipped["reason"].tolist() == ["no .npy label vector in the webdataset shard"]
    # indices decoded by classnames.txt: [age 3, gender 1, race 3] -> 20-29, Female, Indian
    row = manifest.set_index("image_id").loc["0/s00000008"]
    assert (row.age, row.gender, row.race) == ("20-29", "Female", "Indian")
    assert dist[dist.attribute == "race"]["class"].tolist() == ["White", "Black", "Asian", "Indian", "Others"]
    with Image.open(row.path) as im:
        assert im.size == (32, 32)
    (root / "classnames.txt").write_text("race:White\ngender:Male\nage:0-2\n")  # too few classes for the indices
    with pytest.raises(VlmbiasError, match=r"0.tar sample s00000001: label vector \[1, 0, 1, 1\] does not index"):
        build_manifest({"type": "utkface-hub", "image_dir": str(tmp_path / "img")})
