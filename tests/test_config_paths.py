"""Config runs fail fast: dataset roots, label CSVs and local model paths are checked before any job."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlmbias import VlmbiasError
from vlmbias.config import check_paths, validate

REPO = Path(__file__).resolve().parents[1]


def _config(fairface_dir, tiny_hf, **datasets_models):
    config = {
        "datasets": {"ff": {"type": "fairface", "root": str(fairface_dir)}},
        "models": {"tiny": {"backend": "hf", "name": str(tiny_hf)}},
        "query_sets": {"jobs": {"queries": ["a doctor"]}},
    }
    for key, value in datasets_models.items():
        config[key].update(value)
    validate(config)
    return config


def test_existing_paths_pass(fairface_dir, tiny_hf, tmp_path):
    (tmp_path / "labels.csv").write_text("file,gender\n")
    check_paths(_config(fairface_dir, tiny_hf, datasets={
        "lf": {"type": "labelled-folder", "root": str(fairface_dir), "csv": str(tmp_path / "labels.csv")},
        "hub": {"type": "fairface-hub"}}, models={"hubmodel": {"backend": "hf", "name": "openai/clip-vit-base-patch32"}}))


@pytest.mark.parametrize("datasets, models, message", [
    ({"ff": {"type": "fairface", "root": "data/no-fairface"}}, {},
     "datasets.ff.root: folder data/no-fairface not found (looked in {cwd}/data/no-fairface) (download FairFace"),
    ({"ff": {"type": "labelled-folder", "root": "{ff}", "csv": "nolabels.csv"}}, {},
     "datasets.ff.csv: label file {ff}/nolabels.csv not found"),
    ({"ff": {"type": "fairface", "root": "{cwd}"}}, {},
     "datasets.ff.root: label file {cwd}/fairface_label_val.csv not found"),
    ({}, {"tiny": {"backend": "hf", "name": "./models/tinyclp"}},
     "models.tiny.name ./models/tinyclp: no such folder (looked in {cwd}/models/tinyclp)"),
    ({}, {"tiny": {"backend": "open_clip", "name": "ViT-B-32", "pretrained": "ckpt/vit.safetensors"}},
     "models.tiny.pretrained: checkpoint ckpt/vit.safetensors not found"),
])
def test_missing_paths_are_one_sentence_each(datasets, models, message, fairface_dir, tiny_hf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fill = {"ff": str(fairface_dir), "cwd": str(tmp_path)}
    datasets = yaml.safe_load(yaml.safe_dump(datasets).replace("'{ff}'", fill["ff"]).replace("'{cwd}'", fill["cwd"]))
    config = _config(fairface_dir, tiny_hf, datasets=datasets, models=models)
    with pytest.raises(VlmbiasError) as e:
        check_paths(config)
    assert message.format(**fill) in str(e.value)


def test_unused_datasets_and_world_entries_are_not_checked(fairface_dir, tiny_hf):
    config = _config(fairface_dir, tiny_hf, datasets={"other": {"type": "fairface", "root": "/nowhere"}})
    config["audit"] = {"datasets": ["ff"]}
    check_paths(config)
    check_paths(yaml.safe_load((REPO / "config.yaml").read_text()))  # the default run: all generated


@pytest.mark.slow
def test_dry_run_names_a_missing_dataset_root(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "datasets": {"mine": {"type": "labelled-folder", "root": "photos", "csv": "labels.csv"}},
        "models": {"tiny": {"backend": "hf", "name": "openai/clip-vit-base-patch32"}},
        "query_sets": {"jobs": {"queries": ["a doctor"]}}}))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "1", "-n"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode != 0
    assert "invalid configuration: datasets.mine.root: folder photos not found" in run.stdout + run.stderr
