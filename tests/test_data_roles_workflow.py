"""End to end without a calibration world: only a labelled folder (split into a reference part and
an audited part) and a caption set, and every method that fits on data (BendVLM, SANER, the prompt
array) plus quality's caption retrieval, over two folds: each fold draws its concepts and both parts
again, fits on its reference part and audits its evaluation part, and the folds are averaged."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from vlmbias.testing import make_fairface_folder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
GENDER_CLASSES = ["Male", "Female"]


def _image(path, value, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = np.clip(np.full((16, 16, 3), value) + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def _data(root: Path) -> dict:
    faces = make_fairface_folder(root / "faces", per_cell=4, seed=0)  # 56 images, 28 per gender
    # a caption set: captions naming a gender word and a concept, one labelled image each
    rows = []
    for i, (concept, gender) in enumerate([(c, g) for c in ("doctor", "teacher", "pilot") for g in GENDER_CLASSES] * 2):
        _image(root / "captions" / f"{i}.png", 60 + 20 * i % 200, i)
        rows.append({"file": f"{i}.png", "caption": f"a {'man' if gender == 'Male' else 'woman'} who is a {concept}",
                     "gender": gender})
    pd.DataFrame(rows).to_csv(root / "captions" / "captions.csv", index=False)
    # a search stand-in: one folder per keyword, and a CSV of true labels for label source csv
    labels = []
    for concept in ("doctor", "teacher"):
        for i in range(4):
            rel = f"{concept}/{i}.png"
            _image(root / "search" / rel, 100 + 30 * i, i)
            labels.append({"file": rel, "gender": GENDER_CLASSES[i % 2]})
    pd.DataFrame(labels).to_csv(root / "search" / "labels.csv", index=False)
    return {"faces": faces}


def test_no_world_config_runs_every_fitted_method(tmp_path, tiny_hf):
    paths = _data(tmp_path / "data")
    folder = {"type": "labelled-folder", "csv": "fairface_label_val.csv",
              "attributes": {"gender": GENDER_CLASSES}}
    config = {
        "run_name": "roles",
        # BendVLM fits on one seeded half of the folder and the audit sees the other half
        "datasets": {"faces-all": {**folder, "root": str(paths["faces"])},
                     "faces": {"type": "part", "of": "faces-all", "part": "evaluation"},
                     "faces-ref": {"type": "part", "of": "faces-all", "part": "reference"},
                     "caps": {"type": "captions", "root": str(tmp_path / "data/captions"), "csv": "captions.csv",
                              "attributes": ["gender"]}},
        "models": {"tiny": {"backend": "hf", "name": str(tiny_hf)}},
        "query_sets": {"jobs": {"queries": ["a doctor", "a teacher", "a pilot"]}},
        "audit": {"datasets": ["faces"]},
        "retrieval": {"k": [5, 10]},
        "metrics": {"n_boot": 100},
        "embed": {"num_workers": 0},
        "figures": {"grid_k": 5, "bar_k": 5},
        "mitigation": {
            "base_model": "tiny", "dataset": "faces", "query_sets": ["jobs"], "k": 5, "captions": "caps",
            # two folds: fold 0 (seed 5) holds out "pilot", fold 1 (seed 6) "doctor"
            "split": {"held_out_fraction": 0.4, "seed": 5, "folds": 2},
            "acquire": {"source": "folder", "root": str(tmp_path / "data/search"), "keywords": ["doctor", "teacher"],
                        "limit": 4},
            "label": {"source": "csv", "csv": str(tmp_path / "data/search/labels.csv"),
                      "root": str(tmp_path / "data/search"), "attributes": ["gender"],
                      "balanced": {"per": "concept", "attributes": ["gender"], "seed": 0}},
            "methods": {"bendvlm": {"kind": "bendvlm", "reference": "faces-ref", "attributes": ["gender"]},
                        "saner": {"kind": "saner", "epochs": 2},
                        "prompt-array": {"kind": "prompt-array", "epochs": 1, "adv_attributes": ["gender"]}},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "2", "--quiet", "rules"], capture_output=True, text=True,
                         timeout=1500, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    res, top = tmp_path / "results/roles", tmp_path / "results/roles/mitigation"
    mit = top / "folds/0"  # fold 0: the single split's concepts and parts
    assert not (res / "world").exists()
    # BendVLM's references are the reference part's images (half of each gender), never audited ones
    ref = pd.read_parquet(mit / "reference/bendvlm/reference.parquet")
    assert len(ref) == 28 and list(ref.columns) == ["image_id", "gender"]
    assert ref["gender"].value_counts().to_dict() == {"Male": 14, "Female": 14}
    audited = pd.read_parquet(tmp_path / "results/roles/data/faces/manifest.parquet")
    assert len(audited) == 28 and set(audited["image_id"]).isdisjoint(ref["image_id"])
    written = pd.read_parquet(tmp_path / "results/roles/data/faces-ref/manifest.parquet")  # the split, written out
    assert written["image_id"].tolist() == sorted(ref["image_id"])
    assert sorted([*audited["image_id"], *ref["image_id"]]) == sorted(f"val/{n}.jpg" for n in range(1, 57))
    log = (tmp_path / "results/roles/logs/dataset_manifest/faces.log").read_text()
    assert "part evaluation: kept 28 of 56 images" in log
    for ranking in (tmp_path / "results/roles/retrieval/faces").glob("*/*.parquet"):
        assert set(pd.read_parquet(ranking)["image_id"]) <= set(audited["image_id"]), ranking
    assert len(list((tmp_path / "results/roles/retrieval/faces").glob("*/*.parquet"))) >= 4
    # SANER trained on the caption set without the held-out concept's captions
    used = pd.read_csv(mit / "saner/saner/captions.csv")
    assert len(used) == 8 and not used["caption"].str.contains("pilot").any()
    quality = pd.concat([pd.read_csv(p) for p in sorted((mit / "quality").glob("*.csv"))])
    for model in ("tiny", "tiny~bendvlm", "tiny~saner", "tiny~prompt-array"):
        rows = quality[(quality["model"] == model) & quality["metric"].str.contains("retrieval_recall@")]
        assert len(rows) == 6 and rows["n"].isin([12]).all(), model  # 12 captions, 12 images, k 1/5/10
    comparison = pd.read_csv(mit / "comparison.csv")
    held_out = comparison[comparison["split"] == "held_out"]
    assert {"bendvlm", "saner", "prompt-array"} <= set(held_out["method"])  # "pilot" is never fitted on
    assert set(pd.read_csv(mit / "split.csv").query("split == 'held_out'")["concept"]) == {"pilot"}

    # fold 1: other concepts, and both parts drawn again (seed + 1), still disjoint and covering the folder
    one = top / "folds/1"
    assert set(pd.read_csv(one / "split.csv").query("split == 'held_out'")["concept"]) == {"doctor"}
    ref1 = pd.read_parquet(one / "reference/bendvlm/reference.parquet")
    audited1 = pd.read_parquet(res / "data/faces~fold1/manifest.parquet")
    assert len(ref1) == len(audited1) == 28 and set(audited1["image_id"]).isdisjoint(ref1["image_id"])
    assert ref1["gender"].value_counts().to_dict() == {"Male": 14, "Female": 14}
    assert sorted([*audited1["image_id"], *ref1["image_id"]]) == sorted(f"val/{n}.jpg" for n in range(1, 57))
    assert set(audited1["image_id"]) != set(audited["image_id"])
    assert pd.read_parquet(res / "data/faces-ref~fold1/manifest.parquet")["image_id"].tolist() == sorted(ref1["image_id"])
    rankings1 = list((res / "retrieval/faces~fold1").glob("*/*.parquet"))
    assert {r.parent.name for r in rankings1} == {"tiny", "tiny~bendvlm~fold1", "tiny~saner~fold1",
                                                  "tiny~prompt-array~fold1"}  # the base model on fold 1's images too
    for ranking in rankings1:
        assert set(pd.read_parquet(ranking)["image_id"]) <= set(audited1["image_id"]), ranking
    assert not pd.read_csv(one / "saner/saner/captions.csv")["caption"].str.contains("doctor").any()

    # compare_folds: each number the mean of the two folds', with a t-interval over the folds
    folds = {f: pd.read_csv(top / f"folds/{f}/comparison_summary.csv") for f in (0, 1)}
    summary = pd.read_csv(top / "comparison_summary.csv")
    key = ["method", "split", "k", "attribute", "metric"]
    both = folds[0].merge(folds[1], on=key, suffixes=("_0", "_1")).merge(summary, on=key)
    assert len(both) == len(summary) > 0 and (summary["folds"] == 2).all()
    for col in ("mean_before", "mean_after"):
        assert both[col].to_numpy() == pytest.approx(((both[f"{col}_0"] + both[f"{col}_1"]) / 2).to_numpy(),
                                                     nan_ok=True), col
        # two folds: mean +- t(0.975, 1) |a - b| / 2, t = 12.706205
        half = 12.706205 * (both[f"{col}_0"] - both[f"{col}_1"]).abs() / 2
        assert both[f"{col}_fold_high"].to_numpy() == pytest.approx((both[col] + half).to_numpy(), rel=1e-6,
                                                                     nan_ok=True), col
        assert both[f"{col}_fold_low"].to_numpy() == pytest.approx((both[col] - half).to_numpy(), rel=1e-6,
                                                                    nan_ok=True), col
    assert {"change", "change_fold_low", "change_fold_high"} <= set(summary.columns)
    table = pd.read_csv(top / "comparison.csv")
    assert sorted(table["fold"].unique()) == [0, 1] and (table["fold"] == 1).sum() == len(
        pd.read_csv(one / "comparison.csv"))
