"""End-to-end: the real Snakefile on generated data and a tiny model, in a temporary directory."""
import os
import signal
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vlmbias.io import read_table
from vlmbias.testing import make_thesis_data

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--quiet", "rules", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # its own process group, so a timeout ends every job it started, not only snakemake itself
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=1800)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            pytest.fail(f"snakemake did not finish in 30 min:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_workflow_config):
    wd = tmp_path_factory.mktemp("wf")
    (wd / "config.yaml").write_text(yaml.safe_dump(tiny_workflow_config(), allow_unicode=True))
    run = snakemake(wd)
    assert run.returncode == 0, run.stdout + run.stderr
    return wd


def test_full_run_writes_every_artifact(workdir):
    res = workdir / "results" / "smoke"
    summary = pd.read_csv(res / "metrics/ff/tiny/jobs_summary.csv")
    assert set(summary["query"]) == {"a doctor", "a nurse"} and set(summary["k"]) == {5, 20}
    assert set(summary["attribute"]) == {"gender", "race", "age"}
    classes = pd.read_csv(res / "metrics/ff/tiny/jobs_classes.csv")
    # counts per (query, k, attribute) add up to k
    sums = classes.groupby(["query", "k", "attribute"])["count"].sum().reset_index()
    assert (sums["count"] == sums["k"]).all()
    groups = pd.read_csv(res / "metrics/ff/tiny/groups_summary.csv")
    assert groups.loc[groups.attribute == "race", "named_class"].eq("Black").all()
    figs = sorted(p.name for p in (res / "figures/ff/tiny/jobs").glob("*.png"))
    assert any(f.startswith("bars_gender") for f in figs) and sum(f.startswith("grid_") for f in figs) == 2
    for rule in ("dataset_manifest", "embed_images", "embed_queries", "retrieve", "metrics", "figures"):
        assert list((res / "logs" / rule).glob("*.log")), rule


def test_changed_query_list_does_not_reembed_images(workdir):
    res = workdir / "results" / "smoke"
    images = res / "embeddings/ff/tiny/images.npy"
    before = images.stat().st_mtime_ns
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["query_sets"]["jobs"]["queries"].append("a firefighter")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    run = snakemake(workdir)
    assert run.returncode == 0, run.stdout + run.stderr
    assert images.stat().st_mtime_ns == before
    summary = pd.read_csv(res / "metrics/ff/tiny/jobs_summary.csv")
    assert "a firefighter" in set(summary["query"])
    assert "embed_images" not in run.stdout + run.stderr


def test_bad_config_stops_before_any_job(workdir, tmp_path):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["models"]["tiny"]["backend"] = "hff"
    config["run_name"] = "bad"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path)
    assert run.returncode != 0
    assert "at models.tiny.backend: 'hff' is not one of" in run.stderr + run.stdout
    assert not (tmp_path / "results").exists()


def test_missing_dataset_root_fails_cleanly(workdir, tmp_path):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["datasets"]["ff"]["root"] = str(tmp_path / "nowhere")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path)
    assert run.returncode != 0  # the config check names the folder before any job starts
    assert f"invalid configuration: datasets.ff.root: folder {tmp_path / 'nowhere'} not found" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()


SHARD_TARGET = "results/smoke/retrieval/ff/tiny/jobs.parquet"


@pytest.fixture(scope="module")
def sharded_pair(tmp_path_factory, tiny_workflow_config):
    """The small audit up to one retrieval, once unsharded (exact) and once in 3 shards of 16 images
    with an approximate index that probes its one list (exhaustive, so it must find the exact top-k)."""
    runs = {}
    for name, shard_size, retrieval in [
            ("whole", None, {"k": [5, 20]}),
            ("shards", 16, {"k": [5, 20], "method": "approximate", "approximate": {"nlist": 1, "nprobe": 1}})]:
        wd = tmp_path_factory.mktemp(name)
        config = tiny_workflow_config(embed={"num_workers": 0, "batch_size": 8, "shard_size": shard_size},
                                      retrieval=retrieval)
        (wd / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
        run = snakemake(wd, "--", SHARD_TARGET)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        runs[name] = wd
    return runs


def test_sharded_embedding_equals_unsharded_bitwise(sharded_pair):
    whole, shards = (sharded_pair[n] / "results/smoke" for n in ("whole", "shards"))
    for name in ("images.npy", "images.parquet", "skipped.csv"):
        assert (shards / "embeddings/ff/tiny" / name).read_bytes() == (whole / "embeddings/ff/tiny" / name).read_bytes()
    # 42 images in shards of 16: three embedding jobs, one merge
    assert sorted(p.name for p in (shards / "embeddings/ff/tiny/shards").glob("*.npy")) == ["0.npy", "1.npy", "2.npy"]
    assert sorted(p.name for p in (shards / "logs/embed_images").glob("*.log")) == [
        "ff_tiny_0.log", "ff_tiny_1.log", "ff_tiny_2.log"]
    assert (shards / "logs/merge_embeddings/ff_tiny.log").is_file()
    a, b = (read_table(r / "retrieval/ff/tiny/jobs.parquet") for r in (whole, shards))
    assert a["image_id"].tolist() == b["image_id"].tolist()
    recall = pd.read_csv(shards / "retrieval/ff/tiny/jobs_recall.csv")
    assert sorted(recall["k"].unique()) == [5, 20] and len(recall) == 4 and (recall["recall"] == 1.0).all()
    assert not (whole / "retrieval/ff/tiny/jobs_recall.csv").exists()


def test_removed_shard_reruns_alone(sharded_pair):
    wd = sharded_pair["shards"]
    emb = wd / "results/smoke/embeddings/ff/tiny"
    logs = wd / "results/smoke/logs/embed_images"
    before = {p: p.stat().st_mtime_ns for p in [emb / "shards/0.npy", emb / "shards/2.npy", logs / "ff_tiny_0.log",
                                                 logs / "ff_tiny_2.log", logs / "ff_tiny_1.log"]}
    merged = (emb / "images.npy").read_bytes()
    # what a run killed during shard 1 leaves: the other shards, no shard 1, no merge
    for path in [emb / "shards/1.npy", emb / "images.npy", emb / "images.parquet", emb / "skipped.csv",
                 wd / SHARD_TARGET, wd / SHARD_TARGET.replace(".parquet", "_recall.csv")]:
        path.unlink()
    plan = snakemake(wd, "-n", "--", SHARD_TARGET)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.stdout, re.M))
    assert counts.get("embed_images") == "1" and counts.get("merge_embeddings") == "1", plan.stdout
    assert counts.get("retrieve") == "1" and "dataset_manifest" not in counts and "embed_queries" not in counts
    run = snakemake(wd, "--", SHARD_TARGET)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    changed = [p.name for p, t in before.items() if p.stat().st_mtime_ns != t]
    assert changed == ["ff_tiny_1.log"]  # only shard 1 ran again
    assert (emb / "shards/1.npy").is_file() and (emb / "images.npy").read_bytes() == merged


def test_default_intersection_reaches_tables_figures_and_zeroshot(tmp_path, tiny_workflow_config):
    """The intersection the default config declares on its dataset, on the tiny audit: the derived
    attribute is in the distribution, the metric tables, the figures and the zero-shot tables (the
    default run itself asserts the same in test_default_run.py)."""
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    intersections = default["datasets"]["world"]["intersections"]
    assert intersections == {"gender_race": ["gender", "race"]}
    config = tiny_workflow_config(query_sets={"jobs": {"queries": ["a doctor", "a nurse"]}}, zeroshot={})
    config["datasets"]["ff"]["intersections"] = intersections
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    res = "results/smoke"
    targets = [f"{res}/metrics/ff/tiny/jobs_summary.csv", f"{res}/figures/ff/tiny/jobs",
               f"{res}/zeroshot/ff/tiny/accuracy.csv", f"{res}/zeroshot/ff/tiny/worst_group.csv"]
    run = snakemake(tmp_path, "--", *targets)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = tmp_path / res
    groups = pd.read_csv(res / "data/ff/distribution.csv").query("attribute == 'gender_race'")
    assert len(groups) == 14 and groups["class"].iat[0] == "Male|East Asian"
    summary = pd.read_csv(res / "metrics/ff/tiny/jobs_summary.csv")
    assert set(summary["attribute"]) == {"gender", "race", "age", "gender_race"}
    rows = summary[summary.attribute == "gender_race"]
    assert len(rows) == 2 * 2 and rows["max_skew_uniform"].notna().all()  # queries x ks
    assert (res / "figures/ff/tiny/jobs/bars_gender_race.png").is_file()
    accuracy = pd.read_csv(res / "zeroshot/ff/tiny/accuracy.csv")
    assert "gender_race" in set(accuracy["group_attribute"])
    worst = pd.read_csv(res / "zeroshot/ff/tiny/worst_group.csv").query("group_attribute == 'gender_race'")
    assert len(worst) and worst["worst_group"].str.contains("|", regex=False).all()


def test_non_human_overlay_adds_the_animal_to_the_default_world(tmp_path):
    """config/world_non_human.yaml merges into the default config: the world it plans holds the
    animal figure beside every default concept, under its own run name."""
    (tmp_path / "config.yaml").write_text("{}\n")
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                          "--cores", "2", "-n", "-p", "--configfile", str(REPO / "config.yaml"),
                          str(REPO / "config/world_non_human.yaml"), "--replace-workflow-config"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    generate = next(line for line in run.stdout.splitlines() if "vlmbias.world.generate" in line)
    assert '"figure": "animal"' in generate and '"offender"' in generate and '"accountant"' in generate
    assert "results/world-non-human/calibration/world-clip/checks.csv" in run.stdout


def test_thesis_config_is_valid_and_plans_every_experiment(tmp_path):
    """The real-data config cannot run offline, but it must validate and plan its whole DAG; without
    FairFace on disk the dry run stops at once, naming the folder."""
    (tmp_path / "config.yaml").write_text("{}\n")
    run = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/thesis.yaml"), "--replace-workflow-config")
    assert run.returncode != 0
    assert "datasets.fairface.root: folder data/fairface-img-margin025-trainval not found" in run.stdout + run.stderr
    make_thesis_data(tmp_path)
    run = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/thesis.yaml"), "--replace-workflow-config")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # its images are embedded in shards (embed.shard_size), planned once the manifest checkpoint has run
    assert "The run involves checkpoint jobs" in run.stdout
    for rule in ("merge_embeddings", "finetune", "compare", "quality"):
        assert rule in run.stdout


def test_report_gathers_figures(workdir):
    run = snakemake(workdir, "--report", "report.html")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    html = (workdir / "report.html").read_text(errors="replace")
    assert "bars_gender" in html and "grid_" in html and "Audit" in html


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(workdir: Path, page: Path) -> str:
    """The page as a reader sees it: Chromium's DOM after the report's JavaScript ran, scripts removed."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={workdir / 'chromium'}",
             "--virtual-time-budget=15000", "--window-size=1400,1000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return re.sub(r"<(script|style)\b.*?</\1>", "", dom.stdout, flags=re.S)


@pytest.mark.skipif(not CHROMIUM, reason="needs Chromium (README: apt-get install chromium)")
def test_report_opens_on_the_summary_page(workdir):
    """The landing page (the report's workflow description) is the generated summary: what was run,
    and the headline MaxSkew table with this run's numbers, its section names links."""
    run = snakemake(workdir, "--report", "summary_report.html")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = re.sub(r"<[^>]+>", " ", rendered_dom(workdir, workdir / "summary_report.html"))
    text = re.sub(r"\s+", " ", text)
    assert "Run smoke : 1 dataset(s) (ff), 1 model(s) (tiny)" in text, text[:3000]
    assert "Headline: MaxSkew@k, uniform target" in text
    assert text.index("At a glance") < text.index("Headline: MaxSkew@k, uniform target")  # the matrix first
    head = pd.read_csv(workdir / "results/smoke/summary/headline.csv")
    row = head[(head["query"] == "a doctor") & (head["attribute"] == "gender")].iloc[0]
    assert row["k"] == 20 and f"{row.max_skew_uniform:.3f} [{row.low:.3f}, {row.high:.3f}]" in text
