"""Data roles as ordinary datasets: caption sets (CSV and COCO layouts), FairFace's train split,
BendVLM references and SANER captions from named datasets, caption retrieval recall@k, and the
config rules that keep fitting data apart from the audited set."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias import config as vconfig
from vlmbias.audit.data import build_manifest, caption_set, fairface_manifest
from vlmbias.mitigate.quality import caption_retrieval
from vlmbias.mitigate.saner import caption_set_rows, mentions
from vlmbias.testing import make_fairface_folder, make_thesis_data


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def caption_csv(tmp_path):
    for i in range(3):
        _image(tmp_path / "img" / f"{i}.png", 40 * i)
    pd.DataFrame({"file": ["img/0.png", "img/0.png", "img/1.png", "img/2.png", "img/2.png"],
                  "caption": ["a man cooking", "a person in a kitchen", "a woman reading", "a nurse at work",
                              "a female nurse"],
                  "gender": ["Male", "Male", "Female", "Female", "Female"]}).to_csv(tmp_path / "captions.csv",
                                                                                   index=False)
    return tmp_path


def test_caption_set_csv_layout(caption_csv):
    spec = {"type": "captions", "root": str(caption_csv), "csv": "captions.csv", "attributes": ["gender"]}
    images, captions, missing, classes = caption_set(spec)
    assert images["image_id"].tolist() == ["img/0.png", "img/1.png", "img/2.png"]
    assert images["gender"].tolist() == ["Male", "Female", "Female"]
    assert len(captions) == 5 and captions["image_id"].tolist()[:2] == ["img/0.png", "img/0.png"]
    assert missing.empty and classes == {"gender": ["Female", "Male"]}
    manifest, dist, _ = build_manifest(spec)  # audited like any labelled set
    assert dist.set_index("class")["count"].to_dict() == {"Female": 2, "Male": 1}


def test_caption_set_errors_name_the_problem(caption_csv):
    table = pd.read_csv(caption_csv / "captions.csv")
    table.loc[1, "gender"] = "Female"  # image 0 labelled Male on one row, Female on another
    table.to_csv(caption_csv / "clash.csv", index=False)
    with pytest.raises(VlmbiasError, match="img/0.png.*different labels"):
        caption_set({"root": str(caption_csv), "csv": "clash.csv", "attributes": ["gender"]})
    with pytest.raises(VlmbiasError, match="needs a 'csv'"):
        caption_set({"root": str(caption_csv)})
    with pytest.raises(VlmbiasError, match="COCO caption file not found"):
        caption_set({"root": str(caption_csv), "layout": "coco"})


def test_caption_set_coco_layout(tmp_path):
    for i, name in enumerate(["000000000139.jpg", "000000000285.jpg", "000000000632.jpg"]):
        _image(tmp_path / "val2017" / name, 50 * i)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps({
        "images": [{"id": 139, "file_name": "000000000139.jpg"}, {"id": 285, "file_name": "000000000285.jpg"},
                   {"id": 632, "file_name": "000000000632.jpg"}],
        "annotations": [{"image_id": 285, "id": 1, "caption": "A big bear. "},
                        {"image_id": 139, "id": 2, "caption": "A woman in a room."},
                        {"image_id": 285, "id": 3, "caption": "A brown bear sitting."}]}))
    images, captions, missing, classes = caption_set({"root": str(tmp_path), "layout": "coco"})
    # 632 has no caption: not part of the set
    assert images["image_id"].tolist() == ["val2017/000000000139.jpg", "val2017/000000000285.jpg"]
    assert captions.values.tolist() == [["val2017/000000000285.jpg", "A big bear."],
                                        ["val2017/000000000139.jpg", "A woman in a room."],
                                        ["val2017/000000000285.jpg", "A brown bear sitting."]]
    assert missing.empty and classes == {}


def test_fairface_train_split_reads(tmp_path):
    root = make_fairface_folder(tmp_path, per_cell=1, split="train")
    manifest, missing, _ = fairface_manifest(root, "train")
    assert len(manifest) == 14 and missing.empty and manifest["image_id"].str.startswith("train/").all()
    spec = {"type": "fairface", "root": str(root), "split": "train"}
    assert len(build_manifest(spec)[0]) == 14


class _Fixed:
    """An encoder whose text embeddings are looked up in a table (unit rows)."""

    def __init__(self, table):
        self.table = table

    def encode_texts(self, texts):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def test_caption_retrieval_recall_by_hand():
    e = np.eye(3, dtype=np.float32)
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "path": ["", "", ""]})
    # captions of a point at a; of b: one at b, one at c (wrong); of c: at b (wrong)
    captions = pd.DataFrame({"image_id": ["a", "b", "b", "c"], "caption": ["ta", "tb", "tb2", "tc"]})
    enc = _Fixed({"ta": e[0], "tb": e[1], "tb2": e[2] * 0.9 + e[1] * 0.1, "tc": e[1] * 0.8 + e[2] * 0.2})
    rows = pd.DataFrame(caption_retrieval(enc, "m", images, captions, image_emb=e, ks=(1, 2))).set_index("metric")
    # text -> image @1: ta->a hit, tb->b hit, tb2->c miss, tc->b miss: 2/4
    assert rows.loc["image_retrieval_recall@1", "value"] == 0.5 and rows.loc["image_retrieval_recall@1", "n"] == 4
    # @2: tb2 -> [c, b] hits (b is its image), tc -> [b, c] hits: 4/4
    assert rows.loc["image_retrieval_recall@2", "value"] == 1.0
    # image -> text @1: a->ta hit; b->tb hit; c->tb2 (0.9) which belongs to b: miss -> 2/3
    assert rows.loc["text_retrieval_recall@1", "value"] == pytest.approx(2 / 3)
    # @2: c -> [tb2, tc]: tc is c's -> hit: 3/3
    assert rows.loc["text_retrieval_recall@2", "value"] == 1.0


def test_saner_captions_leave_out_held_out_concepts():
    assert mentions("A Nurse at work", ["nurse"]) and not mentions("a nursery", ["nurse"])
    assert mentions("two police officers and a police officer", ["police officer"])
    images = pd.DataFrame({"image_id": ["a", "b"], "path": ["/a", "/b"], "gender": ["Male", "Female"]})
    captions = pd.DataFrame({"image_id": ["a", "b", "b"], "caption": ["a man cooking", "a female nurse", "a woman"]})
    rows = caption_set_rows(images, captions, ["nurse"])
    assert rows[["image_id", "caption", "gender"]].values.tolist() == [["a", "a man cooking", "Male"],
                                                                      ["b", "a woman", "Female"]]
    with pytest.raises(VlmbiasError, match="no caption left"):
        caption_set_rows(images, captions.iloc[1:2], ["nurse"])


# ------------------------------------------------------------------ config: roles without a world

def _no_world_config():
    return {
        "datasets": {"faces": {"type": "labelled-folder", "root": "f", "csv": "l.csv"},
                     "faces-ref": {"type": "labelled-folder", "root": "r", "csv": "l.csv"},
                     "caps": {"type": "captions", "root": "c", "csv": "c.csv"}},
        "models": {"clip": {"backend": "hf", "name": "x"}},
        "query_sets": {"jobs": {"queries": ["a doctor", "a nurse", "a pilot"]}},
        "audit": {"datasets": ["faces"]},
        "mitigation": {"base_model": "clip", "dataset": "faces", "query_sets": ["jobs"], "captions": "caps",
                       "split": {"held_out": ["pilot"]},
                       "methods": {"bend": {"kind": "bendvlm", "reference": "faces-ref"},
                                   "saner": {"kind": "saner", "epochs": 1}}},
    }


def test_a_config_without_world_takes_its_fitting_data_from_datasets():
    cfg = _no_world_config()
    vconfig.validate(cfg)
    assert vconfig.reference_dataset(cfg, "bend") == "faces-ref"
    assert vconfig.caption_dataset(cfg, "saner") == "caps" and vconfig.caption_dataset(cfg) == "caps"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["mitigation"]["methods"]["bend"].pop("reference"), "reference is not set"),
    (lambda c: c["mitigation"].pop("captions"), "saner.captions is not set"),
    (lambda c: c["mitigation"]["methods"]["bend"].update(reference="faces"), "is the audited dataset"),
    (lambda c: c["mitigation"]["methods"]["saner"].update(captions="faces-ref"), "must be a dataset of type captions"),
    (lambda c: c["mitigation"].update(captions="nope"), "'nope' is not a configured dataset"),
])
def test_fitting_data_errors(edit, message):
    cfg = copy.deepcopy(_no_world_config())
    edit(cfg)
    with pytest.raises(VlmbiasError, match=message):
        vconfig.validate(cfg)


# ------------------------------------------------------------------ the fitting steps on named datasets

def test_bendvlm_references_from_a_labelled_dataset(tmp_path, tiny_hf, fairface_dir):
    from vlmbias.encoders.bendvlm import load_reference
    from vlmbias.encoders.models import load_encoder
    from vlmbias.encoders.transforms import apply_text_transforms
    from vlmbias.mitigate.bendvlm import main

    model = {"backend": "hf", "name": str(tiny_hf)}
    main(["--model-json", json.dumps(model), "--reference-json", json.dumps({"type": "fairface", "root": str(fairface_dir)}),
          "--spec-json", json.dumps({"attributes": ["gender", "race"]}), "--out", str(tmp_path / "ref")])
    emb, table = load_reference(tmp_path / "ref")
    assert emb.shape[0] == len(table) == 42 and list(table.columns) == ["image_id", "gender", "race"]
    enc = load_encoder(model)
    q = enc.encode_texts(["a doctor", "a female doctor"])
    out = apply_text_transforms(enc, q, ["doctor", "doctor"], [None, "gender"],
                                {"bendvlm": {"reference": str(tmp_path / "ref"), "attributes": ["gender"]}})
    assert np.abs(out[0] - q[0]).max() > 1e-4  # the neutral query is bent
    np.testing.assert_array_equal(out[1], q[1])  # the one naming gender is kept


def test_saner_trains_on_a_caption_set(tmp_path, tiny_hf, caption_csv):
    from vlmbias.mitigate.saner import main

    spec = {"type": "captions", "root": str(caption_csv), "csv": "captions.csv", "attributes": ["gender"]}
    out = tmp_path / "saner"
    main(["--model-json", json.dumps({"backend": "hf", "name": str(tiny_hf)}), "--captions-json", json.dumps(spec),
          "--concepts-json", json.dumps({"held_out": ["nurse"]}), "--spec-json", json.dumps({"epochs": 1}),
          "--out", str(out)])
    used = pd.read_csv(out / "captions.csv")
    assert used["caption"].tolist() == ["a man cooking", "a person in a kitchen", "a woman reading"]
    assert json.loads((out / "saner.json").read_text())["n_train"] == 2  # the two that name a gender


def test_caption_retrieval_embeds_the_caption_set(tiny_hf, caption_csv):
    from vlmbias.encoders.models import load_encoder

    images, captions, _, _ = caption_set({"root": str(caption_csv), "csv": "captions.csv"})
    rows = pd.DataFrame(caption_retrieval(load_encoder({"backend": "hf", "name": str(tiny_hf)}), "tiny", images,
                                          captions))
    assert rows["metric"].tolist() == [f"{d}_retrieval_recall@{k}" for k in (1, 5, 10) for d in ("image", "text")]
    assert rows["n"].tolist() == [5, 3] * 3
    assert (rows.loc[rows["metric"].str.endswith("@5"), "value"] == 1.0).all()  # k >= 3 images finds every one


# ------------------------------------------------------------------ config/thesis.yaml stands alone

def _plan(workdir, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
                          "--cores", "8", "-n", "--configfile", str(repo / "config/thesis.yaml"), *args],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    jobs = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs, run.stdout


def test_thesis_config_is_whole_with_or_without_replacing_the_default(tmp_path):
    from pathlib import Path
    import shutil

    shutil.copy(Path(__file__).resolve().parents[1] / "config.yaml", tmp_path / "config.yaml")  # the default run's
    make_thesis_data(tmp_path)  # the dry run checks that the config's data folders exist
    merged, out = _plan(tmp_path)
    replaced, _ = _plan(tmp_path, "--replace-workflow-config")
    assert merged == replaced
    assert not [r for r in merged if r.startswith("world") or r == "calibrate"] and "results/world" not in out
    for rule in ("bendvlm_reference", "saner_train", "prompt_array_train", "finetune", "quality", "compare"):
        assert merged.get(rule, 0) >= 1, rule
