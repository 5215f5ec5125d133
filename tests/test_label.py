"""label: DeepFace through the real library on stand-in weights, user CSVs (the world's search labels,
imitated classifier error),
balanced fine-tuning sets and the CLI. Offline and fast.

The stand-in weights are vlmbias.testing.deepface's tiny ONNX graphs: gender follows the face's
blue channel, race its red channel, age its green channel. The detector is opencv's Haar cascade with a stand-in cascade file that finds a bright horizontal
band on a black background, so flat images are faceless.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.imagegate import DEFAULT_MAX_PIXELS, refusal
from vlmbias.io import run_cli
from vlmbias.mitigate.label import (
    DEEPFACE_SHA256,
    DEEPFACE_WEIGHTS,
    add_label_noise,
    age_bin,
    balanced_set,
    check_weights,
    distribution_by_keyword,
    label_images,
    main,
)
from vlmbias.testing.deepface import standin_weights

DF_RACES = ["asian", "indian", "black", "white", "middle eastern", "latino hispanic"]


# A two-stage Haar cascade: stage 1 passes windows whose middle third is brighter than both outer
# thirds (a bright band); stage 2 always passes (a last stage that everything fails would be reported
# anyway by detectMultiScale3's reject levels).
BAND_CASCADE = """<?xml version="1.0"?>
<opencv_storage><cascade>
<stageType>BOOST</stageType><featureType>HAAR</featureType><height>24</height><width>24</width>
<stageParams><boostType>GAB</boostType><minHitRate>0.995</minHitRate><maxFalseAlarm>0.5</maxFalseAlarm>
<weightTrimRate>0.95</weightTrimRate><maxDepth>1</maxDepth><maxWeakCount>2</maxWeakCount></stageParams>
<featureParams><maxCatCount>0</maxCatCount><featSize>1</featSize><mode>BASIC</mode></featureParams>
<stageNum>2</stageNum>
<stages>
<_><maxWeakCount>2</maxWeakCount><stageThreshold>1.5</stageThreshold><weakClassifiers>
<_><internalNodes>0 -1 0 0.1</internalNodes><leafValues>-1. 1.</leafValues></_>
<_><internalNodes>0 -1 1 0.1</internalNodes><leafValues>-1. 1.</leafValues></_></weakClassifiers></_>
<_><maxWeakCount>1</maxWeakCount><stageThreshold>0.</stageThreshold><weakClassifiers>
<_><internalNodes>0 -1 0 0.</internalNodes><leafValues>1. 1.</leafValues></_></weakClassifiers></_>
</stages>
<features>
<_><rects><_>0 0 24 16 -1.</_><_>0 8 24 8 2.</_></rects></_>
<_><rects><_>0 8 24 16 -1.</_><_>0 8 24 8 2.</_></rects></_>
</features>
</cascade></opencv_storage>
"""


@pytest.fixture(scope="module")
def deepface_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("deepface_home")
    weights = home / ".deepface" / "weights"
    weights.mkdir(parents=True)
    for name, data in standin_weights().items():
        (weights / name).write_bytes(data)
    for name in ("haarcascade_frontalface_default.xml", "haarcascade_eye.xml"):
        (weights / name).write_text(BAND_CASCADE)
    return home


# deepface's OpenCV detector reads its cascades from the installed OpenCV wheel's `cv2/data/` when
# they are there (most 4.x wheels, some 5.x), else from DEEPFACE_HOME (downloaded there online).
# Which one a fresh install has depends on the wheel, so the tests fix the lookup and run both ways:
# "wheel" puts the stand-in where the wheel's files would be, "home" leaves that folder empty.
CASCADE_LOOKUPS = ("wheel", "home")


@pytest.fixture(params=CASCADE_LOOKUPS)
def deepface_env(request, deepface_home, monkeypatch, tmp_path_factory):
    # label.py sets these for deepface; monkeypatch puts back the values the session started with
    monkeypatch.setenv("DEEPFACE_HOME", str(deepface_home))
    monkeypatch.setenv("DEEPFACE_BACKEND_ENGINE", "onnx")
    # deepface (and werkzeug, which it imports without declaring) are vlmbias dependencies
    pytest.importorskip("deepface.DeepFace", reason="needs deepface and werkzeug: pip install -e .")
    from deepface.models.face_detection.OpenCv import OpenCvClient
    from deepface.modules import modeling

    lookup = "_OpenCvClient__get_opencv_path"  # name-mangled private method: fail loudly if it goes
    assert hasattr(OpenCvClient, lookup), "deepface no longer has OpenCvClient.__get_opencv_path; update the test"
    wheel_data = tmp_path_factory.mktemp(f"cv2_data_{request.param}")
    if request.param == "wheel":
        for name in ("haarcascade_frontalface_default.xml", "haarcascade_eye.xml"):
            (wheel_data / name).write_text(BAND_CASCADE)
    monkeypatch.setattr(OpenCvClient, lookup, lambda self: str(wheel_data))
    # deepface keeps built detectors for the process: build ours afresh, and leave none behind
    def forget_detector():
        getattr(modeling, "cached_models", {}).get("face_detector", {}).pop("opencv", None)

    forget_detector()
    yield deepface_home
    forget_detector()


def test_opencv_detector_reads_the_stand_in_whatever_the_wheel_ships(deepface_env, tmp_path):
    """The real cascade finds no face in a bright band; the stand-in does, both where the wheel keeps
    its cascades and where deepface falls back to when the wheel has none."""
    acquired = acquired_table(tmp_path, [("face", band(face_colour("Man", "white", 30)))])
    labels, dropped, _ = label_images({"source": "deepface", "detector_backend": "opencv", "align": False},
                                      acquired, None, progress=False)
    assert list(labels["image_id"]) == ["kw/face.png"] and dropped.empty


# ------------------------------------------------------------------------------------ test images

def face_colour(gender: str, race: str, age: int) -> tuple[int, int, int]:
    """RGB whose BGR mean makes the stand-in models answer (gender, race, age)."""
    blue = 204 if gender == "Man" else 51
    red = round(255 * (DF_RACES.index(race) + 0.5) / 6)
    return red, round(age * 2.55) + 1, blue


def acquired_table(tmp_path, images: list[tuple[str, np.ndarray]], keyword="a doctor") -> pd.DataFrame:
    rows = []
    (tmp_path / "img").mkdir(exist_ok=True)
    for name, arr in images:
        path = tmp_path / "img" / f"{name}.png"
        Image.fromarray(arr).save(path)
        rows.append({"image_id": f"kw/{name}.png", "path": str(path), "source": "folder", "keyword": keyword,
                     "concept": keyword.split()[-1], "caption": None, "origin": f"/src/{name}.png",
                     "sha1": hashlib.sha1(path.read_bytes()).hexdigest(), "status": "ok", "reason": ""})
    rows.append({"image_id": None, "path": None, "source": "folder", "keyword": "x", "status": "no-results"})
    return pd.DataFrame(rows)


def flat(rgb, size=64):
    return np.full((size, size, 3), rgb, np.uint8)


def band(rgb, size=160):
    img = np.zeros((size, size, 3), np.uint8)
    img[size // 3: 2 * size // 3] = rgb
    return img


CASES = [("Man", "asian", 35, "Male", "East Asian", "30-39"),
         ("Woman", "black", 25, "Female", "Black", "20-29"),
         ("Man", "latino hispanic", 75, "Male", "Latino_Hispanic", "more than 70"),
         ("Woman", "middle eastern", 5, "Female", "Middle Eastern", "3-9"),
         ("Woman", "indian", 62, "Female", "Indian", "60-69"),
         ("Man", "white", 45, "Male", "White", "40-49")]


# ---------------------------------------------------------------------------------------- deepface

def test_age_bins():
    assert [age_bin(a) for a in (0, 2, 3, 9, 10, 19.9, 20, 69, 70, 101)] == \
        ["0-2", "0-2", "3-9", "3-9", "10-19", "10-19", "20-29", "60-69", "more than 70", "more than 70"]


def test_deepface_labels_through_real_library(deepface_env, tmp_path, monkeypatch):
    images = [(f"i{i}", flat(face_colour(g, r, a))) for i, (g, r, a, *_) in enumerate(CASES)]
    acquired = acquired_table(tmp_path, images)
    spec = {"source": "deepface", "detector_backend": "skip"}
    labels, dropped, classes = label_images(spec, acquired, tmp_path / "cache.parquet", progress=False)
    assert dropped.empty and len(labels) == len(CASES)
    got = labels.set_index("image_id")
    for i, (g, r, a, gender, race, age) in enumerate(CASES):
        row = got.loc[f"kw/i{i}.png"]
        assert (row["gender_source"], row["race_source"]) == (g, r)
        assert (row["gender"], row["race"], row["age"]) == (gender, race, age)
        assert abs(row["age_years"] - a) <= 1
        assert row["gender_confidence"] > 99 and row["race_confidence"] > 99
        assert row[f"race_score_{r.replace(' ', '_')}"] == row["race_confidence"]
    assert {"gender_score_Man", "gender_score_Woman", "race_score_latino_hispanic", "face_confidence",
            "n_faces", "keyword", "concept", "caption", "sha1", "origin"} <= set(labels.columns)
    assert "Southeast Asian" not in classes["race"] and "East Asian" in classes["race"]

    # asian -> Southeast Asian when configured; answered from the cache (DeepFace is not called again)
    import deepface.DeepFace as DF
    calls = []
    orig = DF.analyze
    monkeypatch.setattr(DF, "analyze", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again, _, classes2 = label_images({**spec, "asian_as": "Southeast Asian"}, acquired, tmp_path / "cache.parquet",
                                      progress=False)
    assert calls == []
    assert again.set_index("image_id").loc["kw/i0.png", "race"] == "Southeast Asian"
    assert "East Asian" not in classes2["race"]


def test_faceless_images_are_dropped_and_listed(deepface_env, tmp_path):
    images = [("face1", band(face_colour("Man", "white", 30))), ("face2", band(face_colour("Woman", "asian", 30))),
              ("wall", flat((120, 120, 120), 160)), ("sky", flat((90, 140, 230), 160))]
    acquired = acquired_table(tmp_path, images)
    spec = {"source": "deepface", "detector_backend": "opencv", "align": False}
    labels, dropped, _ = label_images(spec, acquired, None, progress=False)
    assert sorted(labels["image_id"]) == ["kw/face1.png", "kw/face2.png"]
    assert sorted(dropped["image_id"]) == ["kw/sky.png", "kw/wall.png"]
    assert set(dropped["reason"]) == {"no face detected"} and list(dropped.columns) == ["image_id", "path", "reason"]
    assert (labels["n_faces"] >= 1).all() and labels["face_confidence"].notna().all()


def test_no_face_anywhere_is_a_clear_error(deepface_env, tmp_path):
    acquired = acquired_table(tmp_path, [("wall", flat((120, 120, 120), 160)), ("sky", flat((9, 9, 9), 160))])
    with pytest.raises(VlmbiasError, match="no image had a detectable face"):
        label_images({"source": "deepface", "detector_backend": "opencv", "align": False}, acquired, None,
                     progress=False)


def test_deepface_bad_options(deepface_env, tmp_path):
    acquired = acquired_table(tmp_path, [("a", flat((1, 2, 3)))])
    with pytest.raises(VlmbiasError, match="asian_as"):
        label_images({"source": "deepface", "asian_as": "Asian"}, acquired, None, progress=False)
    with pytest.raises(VlmbiasError, match="unknown key"):
        label_images({"source": "deepface", "detector": "skip"}, acquired, None, progress=False)


def test_deepface_input_goes_through_the_image_gate(deepface_env, tmp_path, bomb_png):
    acquired = acquired_table(tmp_path, [("face", flat(face_colour("Man", "white", 30)))])
    bomb = {**acquired.iloc[0].to_dict(), "image_id": "kw/bomb.png", "path": str(bomb_png),
            "sha1": hashlib.sha1(bomb_png.read_bytes()).hexdigest()}
    acquired = pd.concat([acquired, pd.DataFrame([bomb])], ignore_index=True)
    spec = {"source": "deepface", "detector_backend": "skip"}
    labels, dropped, _ = label_images(spec, acquired, None, progress=False)
    assert labels["image_id"].tolist() == ["kw/face.png"]
    assert dropped["image_id"].tolist() == ["kw/bomb.png"]
    assert refusal(DEFAULT_MAX_PIXELS) in dropped["reason"].iat[0]
    # the configured limit, not a constant: the 64 x 64 face is over 1000 pixels
    with pytest.raises(VlmbiasError, match="no image could be labelled") as e:
        label_images(spec, acquired, None, progress=False, max_pixels=1000)
    assert refusal(1000) in str(e.value)


# ----------------------------------------------------------------------------------- pinned weights

def standin_sha256() -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in standin_weights().items()}


def test_check_weights_accepts_matches_and_names_a_mismatch(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert check_weights(tmp_path, {"a.onnx": digest, "absent.onnx": "1" * 64}) == {"a.onnx": digest}
    assert check_weights(tmp_path, {"a.onnx": None}) == {"a.onnx": digest}  # unknown pin: digest reported
    with pytest.raises(VlmbiasError) as e:
        check_weights(tmp_path, {"a.onnx": "0" * 64})
    assert str(tmp_path / "a.onnx") in str(e.value) and "0" * 64 in str(e.value) and digest in str(e.value)


def test_no_real_deepface_digest_is_claimed():
    # the real files could not be downloaded here: every built-in pin says "unknown", none is made up
    assert set(DEEPFACE_SHA256) == set(DEEPFACE_WEIGHTS.values()) and set(DEEPFACE_SHA256.values()) == {None}


def test_pinned_deepface_weights(deepface_env, tmp_path, caplog):
    acquired = acquired_table(tmp_path, [("face", flat(face_colour("Woman", "black", 25)))])
    spec = {"source": "deepface", "detector_backend": "skip"}
    pins = standin_sha256()
    labels, _, _ = label_images({**spec, "weights_sha256": pins}, acquired, None, progress=False)
    assert labels["gender"].tolist() == ["Female"]

    gender_file = DEEPFACE_WEIGHTS["Gender"]
    with pytest.raises(VlmbiasError) as e:
        label_images({**spec, "weights_sha256": {**pins, gender_file: "ab" * 32}}, acquired, None, progress=False)
    msg = str(e.value)
    assert gender_file in msg and "ab" * 32 in msg and pins[gender_file] in msg

    caplog.clear()  # unpinned files are loaded, and their digest is logged for the user to pin
    label_images(spec, acquired, None, progress=False)
    assert any(pins[gender_file] in r.getMessage() and "not pinned" in r.getMessage() for r in caplog.records)

    for bad in ({gender_file: "not-a-digest"}, ["x"], {gender_file: 5}):
        with pytest.raises(VlmbiasError, match="weights_sha256"):
            label_images({**spec, "weights_sha256": bad}, acquired, None, progress=False)


# ---------------------------------------------------- the world's search folder: csv labels + noise

@pytest.fixture(scope="module")
def world_acquired(tmp_path_factory):
    from vlmbias.mitigate.acquire import acquire
    from vlmbias.world.generate import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world({"seed": 0, "image_size": 16, "images_per_concept": 40, "group_images": 0, "test_per_cell": 1,
                    "concepts": {"doctor": {"names": {"en": "a doctor"}, "planted": {"gender": {"Male": 0.8}}},
                                 "nurse": {"names": {"en": "a nurse"}}}}, root / "w")
    df = acquire({"source": "folder", "root": str(root / "w" / "search"), "keywords": ["doctor", "nurse"],
                  "limit": 40}, root / "img", progress=False)
    df.to_parquet(root / "acquired.parquet")
    return root / "acquired.parquet"


def world_csv_spec(acquired_path, **extra):
    search = Path(acquired_path).parent / "w" / "search"
    return {"source": "csv", "csv": str(search / "labels.csv"), "root": str(search), **extra}


def test_world_search_labels_are_the_corpus_truth(world_acquired):
    from vlmbias.world.generate import load_corpus

    acquired = pd.read_parquet(world_acquired)
    labels, dropped, _ = label_images(world_csv_spec(world_acquired, caption_column="caption"), acquired)
    assert dropped.empty and len(labels) == 80
    # every acquired image is a byte copy of a corpus image: its labels and caption are that image's
    corpus = load_corpus(Path(world_acquired).parent / "w")
    corpus["sha1"] = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in corpus["path"]]
    truth = corpus.drop_duplicates("sha1").set_index("sha1").loc[labels["sha1"]]
    for col in ("gender", "race", "age", "caption", "concept"):
        assert labels[col].tolist() == truth[col].tolist(), col
    assert labels.loc[labels["concept"] == "doctor", "gender"].eq("Male").mean() == pytest.approx(0.8)
    bare, _, _ = label_images(world_csv_spec(world_acquired), acquired)  # no caption column: the keyword
    assert set(bare["caption"]) == {"doctor", "nurse"}


def test_csv_labels_with_imitated_classifier_error(world_acquired):
    acquired = pd.read_parquet(world_acquired)
    clean, dropped, classes = label_images(world_csv_spec(world_acquired, error_rate=0.0), acquired)
    assert dropped.empty and len(clean) == 80
    assert (clean["gender"] == clean["true_gender"]).all() and not clean["race_flipped"].any()
    noisy, _, _ = label_images(world_csv_spec(world_acquired, error_rate=0.25, seed=3), acquired)
    for attr in ("gender", "race", "age"):
        changed = noisy[attr] != noisy["true_" + attr]
        assert changed.sum() == 20 and (changed == noisy[f"{attr}_flipped"]).all()
        assert noisy[attr].isin(classes[attr]).all()
        assert (noisy["true_" + attr] == clean[attr]).all()
    again, _, _ = label_images(world_csv_spec(world_acquired, error_rate=0.25, seed=3), acquired)
    pd.testing.assert_frame_equal(noisy, again)
    other, _, _ = label_images(world_csv_spec(world_acquired, error_rate={"gender": 0.5}, seed=4), acquired)
    assert other["gender_flipped"].sum() == 40 and not other["race_flipped"].any()
    plain, _, _ = label_images(world_csv_spec(world_acquired), acquired)  # no error_rate: no noise columns
    assert "true_gender" not in plain.columns
    with pytest.raises(VlmbiasError, match="error_rate"):
        label_images(world_csv_spec(world_acquired, error_rate={"shoe size": 0.1}), acquired)


def test_there_is_no_world_label_source(world_acquired):
    with pytest.raises(VlmbiasError, match="source 'world' is not one of"):
        label_images({"source": "world"}, pd.read_parquet(world_acquired))


def test_label_noise_bounds():
    df = pd.DataFrame({"gender": ["Male", "Female"] * 5})
    with pytest.raises(VlmbiasError, match="error_rate"):
        add_label_noise(df, 1.5, {"gender": ["Male", "Female"]})
    out = add_label_noise(df, 1.0, {"gender": ["Male", "Female"]})
    assert (out["gender"] != out["true_gender"]).all()


# --------------------------------------------------------------------------------------------- csv

def test_csv_labels(tmp_path):
    acquired = acquired_table(tmp_path, [("a", flat((1, 2, 3))), ("b", flat((4, 5, 6))), ("c", flat((7, 8, 9)))])
    csv = tmp_path / "labels.csv"
    csv.write_text("file,gender,race\na.png,Female,Black\nb.png,Male,White\nzzz.png,Male,White\n")
    spec = {"source": "csv", "csv": str(csv), "root": "/src", "attributes": ["gender", "race"]}
    labels, dropped, classes = label_images(spec, acquired)
    assert labels.set_index("image_id")["gender"].to_dict() == {"kw/a.png": "Female", "kw/b.png": "Male"}
    assert dropped["image_id"].tolist() == ["kw/c.png"] and "no label" in dropped["reason"].iloc[0]
    assert list(classes) == ["gender", "race"] and "age" not in labels.columns
    csv.write_text("file,gender,race\na.png,female,Black\n")
    with pytest.raises(VlmbiasError, match="unknown class"):
        label_images(spec, acquired)


# ---------------------------------------------------------------------------------------- balanced

def _toy_labels(counts: dict) -> pd.DataFrame:
    rows = []
    for (concept, g, r), n in counts.items():
        rows += [{"image_id": f"{concept}/{g}/{r}/{i}", "concept": concept, "gender": g, "race": r}
                 for i in range(n)]
    return pd.DataFrame(rows)


def test_balanced_set_downsamples_to_smallest_cell():
    labels = _toy_labels({("doctor", "Male", "Black"): 5, ("doctor", "Male", "White"): 9,
                          ("doctor", "Female", "Black"): 3, ("doctor", "Female", "White"): 4,
                          ("nurse", "Male", "Black"): 2, ("nurse", "Male", "White"): 2,
                          ("nurse", "Female", "Black"): 7, ("nurse", "Female", "White"): 2})
    out = balanced_set(labels, seed=1)
    assert out.groupby(["concept", "cell"]).size().to_dict() == {
        ("doctor", c): 3 for c in ("Female|Black", "Female|White", "Male|Black", "Male|White")} | {
        ("nurse", c): 2 for c in ("Female|Black", "Female|White", "Male|Black", "Male|White")}
    pd.testing.assert_frame_equal(out, balanced_set(labels, seed=1))
    assert not out["image_id"].duplicated().any()
    assert len(balanced_set(labels, n_per_cell=1)) == 8
    assert balanced_set(labels, attributes=["gender"]).groupby(["concept", "cell"]).size().min() == 4


def test_balanced_set_empty_cell():
    labels = _toy_labels({("doctor", "Male", "Black"): 2, ("doctor", "Male", "White"): 2,
                          ("doctor", "Female", "Black"): 2, ("nurse", "Male", "Black"): 1,
                          ("nurse", "Male", "White"): 1, ("nurse", "Female", "Black"): 1,
                          ("nurse", "Female", "White"): 1})
    with pytest.raises(VlmbiasError, match=r"concept 'doctor' has no image of class gender=Female/race=White"):
        balanced_set(labels)
    out = balanced_set(labels, allow_missing=True)
    assert out[out["concept"] == "doctor"].groupby("cell").size().to_dict() == {
        "Female|Black": 2, "Male|Black": 2, "Male|White": 2}
    with pytest.raises(VlmbiasError, match="race=Indian"):  # a class required by config but absent everywhere
        balanced_set(labels, classes={"gender": ["Male", "Female"], "race": ["Black", "White", "Indian"]})


# --------------------------------------------------------------------------------------------- CLI

def test_cli_world_search_end_to_end(world_acquired, tmp_path):
    out = {k: tmp_path / f"{k}.{ext}" for k, ext in
           [("labels", "parquet"), ("dropped", "csv"), ("dist", "csv"), ("balanced", "parquet")]}
    spec = world_csv_spec(world_acquired, error_rate=0.1, balanced={"attributes": ["gender"], "allow_missing": True})
    rc = run_cli(main, ["--spec-json", json.dumps(spec), "--acquired", str(world_acquired),
                        "--out-labels", str(out["labels"]), "--out-dropped", str(out["dropped"]),
                        "--out-distribution", str(out["dist"]), "--out-balanced", str(out["balanced"])])
    assert rc == 0
    labels = pd.read_parquet(out["labels"])
    assert list(labels.columns[:5]) == ["image_id", "path", "gender", "race", "age"]
    dist = pd.read_csv(out["dist"])
    assert list(dist.columns) == ["keyword", "concept", "attribute", "class", "count", "percent"]
    assert len(dist) == 2 * (2 + 7 + 9)  # every class listed, zeros included
    assert dist.groupby(["keyword", "attribute"])["count"].sum().eq(40).all()
    balanced = pd.read_parquet(out["balanced"])
    assert balanced.groupby(["concept", "cell"]).size().groupby("concept").nunique().eq(1).all()
    assert pd.read_csv(out["dropped"]).empty


def test_cli_reports_faceless_set(deepface_env, tmp_path, capsys):
    acquired = acquired_table(tmp_path, [("wall", flat((120, 120, 120), 160))])
    acquired.to_parquet(tmp_path / "acq.parquet")
    spec = {"source": "deepface", "detector_backend": "opencv", "align": False}
    rc = run_cli(main, ["--spec-json", json.dumps(spec), "--acquired", str(tmp_path / "acq.parquet"),
                        "--out-labels", str(tmp_path / "l.parquet"), "--out-dropped", str(tmp_path / "d.csv"),
                        "--out-distribution", str(tmp_path / "x.csv")])
    assert rc == 2 and "no image had a detectable face" in capsys.readouterr().err
    assert not (tmp_path / "l.parquet").exists()


def test_distribution_keeps_zero_classes():
    labels = pd.DataFrame({"keyword": ["k"] * 2, "concept": ["c"] * 2, "gender": ["Male", "Male"]})
    dist = distribution_by_keyword(labels, {"gender": ["Male", "Female"]})
    assert dist[["class", "count"]].values.tolist() == [["Male", 2], ["Female", 0]]
