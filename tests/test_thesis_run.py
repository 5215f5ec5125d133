"""`config/thesis.yaml`, the real experiment's config itself (not a copy), run end to end offline.

What is overridden, and nothing else (vlmbias.testing.thesis builds it):
- data roots: none; FairFace (val and train) and COCO captions are generated at the config's own
  relative paths (data/fairface-img-margin025-trainval, data/coco);
- model weights: each open_clip model entry gets `config` and `tags`, which register tiny random-weight
  architectures under the thesis' names and pretrained tags (ViT-B-32:openai, RN50:openai,
  xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k); `openai/clip-vit-base-patch32` is a tiny CLIP in a
  Hugging Face hub cache (HF_HOME, HF_HUB_OFFLINE=1);
- the web search: `mitigation.acquire.search_url` points at a local search engine serving tinted copies
  of a real portrait, with `allow_private_addresses` for 127.0.0.1 and no delay;
- DeepFace: `mitigation.label.deepface_home` holds stand-in weights (the detector is OpenCV's own).
The config's settings (thesis' fine-tuning epochs, n_boot, k, every method) run as written.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vlmbias.testing.thesis import thesis_standins

pytestmark = pytest.mark.long  # about 165 jobs: run with `python -m pytest -m long`

REPO = Path(__file__).resolve().parents[1]
THESIS = REPO / "config" / "thesis.yaml"


def _snakemake(workdir: Path, configs: list[Path], env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", *map(str, configs), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env={**os.environ, **env})


def _planned(stdout: str) -> dict[str, int]:
    """The job counts per rule of a dry run's table."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", stdout, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def thesis_run(tmp_path_factory):
    """The plan of `--configfile config/thesis.yaml` beside the default config.yaml, the run with
    --replace-workflow-config, and a dry run afterwards (again beside config.yaml)."""
    workdir = tmp_path_factory.mktemp("thesis")
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")  # must not leak into a named config
    config = yaml.safe_load(THESIS.read_text())
    with thesis_standins(workdir, config) as (overrides, env):
        standins = workdir / "standins.yaml"
        standins.write_text(yaml.safe_dump(overrides))
        configs = [THESIS, standins]
        plan = _snakemake(workdir, configs, env, "-n")
        assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
        run = _snakemake(workdir, configs, env, "--replace-workflow-config")
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
        after = _snakemake(workdir, configs, env, "-n")
    return workdir, config, plan, run, after


def test_the_whole_plan_runs_and_nothing_of_the_default_config_leaks_in(thesis_run):
    workdir, config, plan, run, after = thesis_run
    planned = _planned(plan.stdout)
    assert not [r for r in planned if r.startswith("world") or r == "calibrate"] and "results/world" not in plan.stdout
    for rule in ("bendvlm_reference", "saner_train", "prompt_array_train", "finetune", "quality", "compare",
                 "zeroshot", "architecture", "training_data", "model_leaderboard"):
        assert planned.get(rule, 0) >= 1, rule
    ran = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\S+):", run.stdout + run.stderr, re.M))
    assert set(planned) <= ran, sorted(set(planned) - ran)
    assert "Nothing to be done" in after.stdout + after.stderr  # the same plan with or without the default config
    assert not (workdir / "results" / "world").exists()


def test_every_mitigation_family_has_held_out_rows(thesis_run):
    workdir, config, *_ = thesis_run
    mit = workdir / "results" / config["run_name"] / "mitigation"
    table = pd.read_csv(mit / "comparison.csv")
    held = table[table["split"] == "held_out"]
    methods = config["mitigation"]["methods"]
    assert set(held["method"]) == set(methods)
    assert {spec["kind"] for spec in methods.values()} == {"prompt", "projection", "lora", "bendvlm", "saner",
                                                            "prompt-array"}
    assert held[["value_before", "value_after"]].notna().all().all()
    quality = pd.read_csv(mit / "quality.csv")
    captions = quality[quality["metric"] == "text_retrieval_recall@5"]  # on the COCO stand-in
    assert set(captions["model"]) == {config["mitigation"]["base_model"]} | {
        f"{config['mitigation']['base_model']}~{m}" for m in methods}


def test_web_search_and_deepface_labels_feed_the_fine_tune(thesis_run):
    workdir, config, *_ = thesis_run
    mit = workdir / "results" / config["run_name"] / "mitigation"
    split = pd.read_csv(mit / "split.csv")
    fitting = set(split.loc[split["split"] == "fitting", "concept"])
    acquired = pd.read_parquet(mit / "acquired" / "acquired.parquet")
    assert set(acquired["concept"]) < fitting | {None} and (acquired["status"] == "ok").all()
    # every fitting keyword's 4 tinted portraits (testing.search.TINTS), none of a held-out concept
    keywords = [k for k in config["mitigation"]["acquire"]["keywords"] if k.removeprefix("a ") in fitting]
    assert sorted(acquired["keyword"].unique()) == sorted(keywords) and len(acquired) == 4 * len(keywords)
    labels = pd.read_parquet(mit / "labels" / "labels.parquet")
    assert set(labels["label_source"]) == {"deepface"} and len(labels) == len(acquired)
    assert set(labels["gender"]) == {"Male", "Female"}  # the tints' blue channel decides DeepFace's answer
