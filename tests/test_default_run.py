"""End-to-end: the default config as shipped (world, audit, calibration, mitigation, experiments) on
the real Snakefile, in a temporary directory. Its own file, so that this long run and the other
end-to-end runs (test_workflow.py) go to different test workers."""
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from test_workflow import REPO, snakemake
from vlmbias.io import read_table
from vlmbias.testing import cut_default_run

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default config as shipped (world, audit, calibration, mitigation, experiments), with only
    the LoRA training cut to a few steps so that the whole chain runs within the test budget."""
    wd = tmp_path_factory.mktemp("default")
    config = cut_default_run(yaml.safe_load((REPO / "config.yaml").read_text()))
    (wd / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    run = snakemake(wd)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return wd / "results" / config["run_name"]


def test_known_answer_calibration(default_run):
    """The audit must find the bias planted in the world, with the planted sign, and none on controls."""
    checks = pd.read_csv(default_run / "calibration/world-clip/checks.csv").set_index("check")
    must_pass = ["strong_gender_plants_found_all", "strong_race_plants_found_all",
                 "controls_closer_than_strong_topk_share", "controls_closer_than_strong_similarity",
                 "dose_response_spearman_similarity", "language_CEO_zh", "language_CEO_ar"]
    failed = [c for c in must_pass if not checks.loc[c, "passed"]]
    assert not failed, checks.loc[failed, ["value", "threshold", "detail"]].to_string()
    # the audit's own metrics get their own dose-response verdicts, whatever they are
    assert {"dose_response_spearman_topk_share", "dose_response_spearman_max_skew"} <= set(checks.index)
    # the zero-shot known answer of the default world (crime-related on White), checked from the
    # zero-shot audit's harmful table; the non-human figure is an overlay (config/world_non_human.yaml)
    zeroshot = {c for c in checks.index if c.startswith("zeroshot_")}
    assert zeroshot == {"zeroshot_crime_planted_group_above_others", "zeroshot_crime_gender_intervals_overlap"}
    assert checks.loc["zeroshot_crime_planted_group_above_others", "passed"], checks.loc["zeroshot_crime_planted_group_above_others"]
    table = pd.read_csv(default_run / "calibration/world-clip/calibration.csv")
    nurse = table[(table.query == "a nurse") & (table.attribute == "gender") & (table["class"] == "Female")]
    assert (nurse["low"] > nurse["parity"]).all() and (nurse["sim_diff_low"] > 0).all()


def test_default_run_reports_intersectional_groups(default_run):
    """The default config's derived gender x race attribute is an attribute everywhere: the dataset
    distribution, the metric tables, the figures and the zero-shot tables."""
    dist = pd.read_csv(default_run / "data/world/distribution.csv")
    groups = dist[dist.attribute == "gender_race"]
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    # the world's test split is balanced: test_per_cell images in each of 2 genders x 7 races
    assert groups["class"].tolist()[:2] == ["Male|East Asian", "Male|Indian"] and len(groups) == 14
    assert (groups["count"] == config["world"]["test_per_cell"]).all()
    for summary in (default_run / "metrics/world/world-clip").glob("*_summary.csv"):
        rows = pd.read_csv(summary)
        assert "gender_race" in set(rows.attribute), summary
        assert rows.loc[rows.attribute == "gender_race", "max_skew_uniform"].notna().any(), summary
        qset = summary.name[: -len("_summary.csv")]
        assert (default_run / "figures/world/world-clip" / qset / "bars_gender_race.png").is_file()
    zeroshot = pd.read_csv(default_run / "zeroshot/world/world-clip/accuracy.csv")
    assert "gender_race" in set(zeroshot.group_attribute)
    worst = pd.read_csv(default_run / "zeroshot/world/world-clip/worst_group.csv")
    assert "|" in worst.loc[worst.group_attribute == "gender_race", "worst_group"].iat[0]


def test_default_chain_runs_mitigation(default_run):
    res = default_run
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    comparison = pd.read_csv(res / "mitigation/comparison.csv")
    assert set(comparison["method"]) == set(config["mitigation"]["methods"])
    quality = pd.read_csv(res / "mitigation/quality.csv")
    assert {"zero_shot_accuracy", "concept_accuracy"} <= set(quality["metric"])
    for method, spec in config["mitigation"]["methods"].items():
        if spec["kind"] == "lora":
            assert (res / f"mitigation/adapters/{method}/adapter_model.safetensors").is_file()
    # text-side methods reuse the base model's image embeddings: nothing is re-embedded per method
    assert sorted(p.name for p in (res / "embeddings/world").iterdir()) == ["world-clip"]
    # the projection removes the gender direction: its mean gender disparity is lower than the base's
    summary = pd.read_csv(res / "mitigation/comparison_summary.csv")
    proj = summary[(summary.method == "projection") & (summary.attribute == "gender") & (summary.metric == "tvd")]
    assert (proj["mean_after"] < proj["mean_before"]).all()
    # the held-out protocol: a recorded split, nothing fitted on a held-out concept, both splits compared
    split = pd.read_csv(res / "mitigation/split.csv")
    held = set(split.loc[split["split"] == "held_out", "concept"])
    assert held and set(split["split"]) == {"fitting", "held_out"}
    acquired = pd.read_parquet(res / "mitigation/acquired/acquired.parquet")
    assert not set(acquired["concept"]) & held
    tvd = summary[summary.metric == "tvd"]
    assert set(tvd["method"]) == set(config["mitigation"]["methods"])
    for method, rows in tvd.groupby("method"):
        assert set(rows["split"]) == {"fitting", "held_out"}, method
        assert set(rows["attribute"]) >= {"gender", "race"}, method
    assert (tvd["mean_after_low"] <= tvd["mean_after"]).all() and (tvd["mean_after"] <= tvd["mean_after_high"]).all()
    assert (res / "mitigation/reference/bendvlm/reference.npy").is_file()
    assert (res / "mitigation/saner/saner/saner.safetensors").is_file()
    assert (res / "mitigation/prompts/prompt-array/prompts.safetensors").is_file()
    arch = pd.read_csv(res / "experiments/architecture.csv")
    assert set(arch["model_b"]) == set(config["experiments"]["architecture"]["models"][1:])
    assert arch["p_holm"].between(0, 1).all() and arch["significant"].any()
    web = pd.read_csv(res / "experiments/training_data.csv")
    # the web images are the LoRA set's: fitting concepts only (the held-out concepts of split.csv are not acquired)
    assert set(web["keyword"]) >= {"doctor", "teacher"} and not set(web["concept"]) & held
    assert web["tvd"].between(0, 1).all()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="needs Chromium (README: apt-get install chromium)")
def test_report_renders_in_headless_chromium(default_run):
    """Open the default run's report as a reader would: the rendered page (after its JavaScript
    ran) must list every category, the calibration and comparison tables and the image grids."""
    workdir = default_run.parents[1]
    run = snakemake(workdir, "--report", "report.html")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={workdir / 'chromium'}",
             "--virtual-time-budget=15000", "--window-size=1400,1000"]
    page = (workdir / "report.html").as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # what the page's JavaScript rendered (scripts and styles removed): the navigation by category
    rendered = re.sub(r"<(script|style)\b.*?</\1>", "", dom.stdout, flags=re.S)
    assert "Loading Snakemake Report" not in rendered or 'id="app"><div' in rendered
    for category in ("Audit", "Calibration", "Mitigation", "Experiments", "Run", "Workflow", "Statistics"):
        assert category in rendered, category
    # the embedded results the categories open onto
    html = (workdir / "report.html").read_text(errors="replace")
    for name in ("checks.csv", "calibration.png", "comparison.csv", "architecture.csv", "training_data.csv",
                 "grid_", "bars_gender", "versions.csv", "config.yaml"):
        assert name in html, name
    shot = subprocess.run([CHROMIUM, *flags, f"--screenshot={workdir / 'report.png'}", page],
                          capture_output=True, text=True, timeout=300)
    assert shot.returncode == 0 and (workdir / "report.png").stat().st_size > 10_000, shot.stderr[-2000:]


def test_moved_project_still_finds_every_image(default_run, tmp_path_factory):
    """Image paths are stored relative to a recorded root (docs/artifacts.md): the finished default
    project moved elsewhere still resolves every image, and later stages run on it from there.
    Moves default_run's folder, so it comes after every other test that uses default_run."""
    new = tmp_path_factory.mktemp("moved") / "project"
    default_run.parents[1].rename(new)
    res = new / "results" / default_run.name
    for table in ("data/world/manifest.parquet", "mitigation/acquired/acquired.parquet",
                  "mitigation/labels/labels.parquet", "mitigation/labels/balanced.parquet"):
        stored = pd.read_parquet(res / table)["path"].dropna()
        assert len(stored) and not stored.map(os.path.isabs).any(), table
        paths = read_table(res / table)["path"].dropna()
        assert paths.map(lambda p: p.startswith(f"{new}/") and os.path.isfile(p)).all(), table
    # later stages from the new place: image grids (they read the manifest's paths) and calibration
    figures, checks = "results/world/figures/world/world-clip/world_gender", res / "calibration/world-clip/checks.csv"
    before = checks.stat().st_mtime_ns
    run = snakemake(new, "--forcerun", "figures", "calibrate", "--", figures, str(checks.relative_to(new)))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert checks.stat().st_mtime_ns > before
    log = (res / "logs/figures/world_world-clip_world_gender.log").read_text()
    assert "cannot read" not in log and list((new / figures).glob("grid_*.png")), log[-2000:]
    cli = subprocess.run([sys.executable, "-m", "vlmbias.cli", "calibrate", "--results", str(res)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode in (0, 1) and "checks passed" in cli.stdout, cli.stdout[-2000:] + cli.stderr[-2000:]
