"""Shell safety of the rules: a config value with a space, ';' or '$(...)' is one argument of the
command it lands in, never a second command. A dry run prints every job's command of a config that
reaches every rule; a real run of the cheap stages shows that the shell does what the quoting says."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NASTY = "a b; touch INJECTED $(touch INJECTED2) `touch INJECTED3`"


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "1", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=workdir)


@pytest.fixture(scope="module")
def nasty(tmp_path_factory, fairface_dir, tiny_hf):
    """A workdir whose config puts NASTY into the results folder, a dataset root and a model path."""
    wd = tmp_path_factory.mktemp("quoting")
    data, model = wd / f"data {NASTY}", wd / f"model {NASTY}"
    shutil.copytree(fairface_dir, data)
    shutil.copytree(tiny_hf, model)
    config = {
        "run_name": "q",
        "results_dir": f"out {NASTY}",
        "datasets": {"ff": {"type": "fairface", "root": str(data)}},
        "models": {"tiny": {"backend": "hf", "name": str(model)}},
        "query_sets": {"jobs": {"queries": ["a doctor"]}},
        "retrieval": {"k": [5]},
        "metrics": {"n_boot": 100, "attributes": ["gender", "race"]},
        "embed": {"num_workers": 0},
        "mitigation": {
            "base_model": "tiny", "dataset": "ff", "query_sets": ["jobs"],
            "split": {"held_out": []},  # one concept: nothing to hold out (in-sample only)
            "acquire": {"source": "folder", "root": str(data), "keywords": ["val"]},
            "label": {"source": "csv", "csv": str(data / "fairface_label_val.csv")},
            "methods": {"prompt": {"kind": "prompt", "suffix": f" {NASTY}"},
                        "lora": {"kind": "lora", "objective": "contrastive"}},
        },
        "experiments": {"architecture": {"dataset": "ff", "models": ["tiny", "tiny~prompt"], "query_sets": ["jobs"]}},
    }
    (wd / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return wd, config


def commands(output: str) -> dict[str, list[str]]:
    """Every printed job command, as the shell would split it, by vlmbias module."""
    out = {}
    for line in output.splitlines():
        if " -m vlmbias." in line:
            words = shlex.split(line)
            out.setdefault(words[words.index("-m") + 1], []).append(words)
    return out


def arg(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def test_dry_run_keeps_every_value_one_argument(nasty):
    wd, config = nasty
    run = snakemake(wd, "-n", "-p")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cmds = commands(run.stdout + run.stderr)
    assert {"vlmbias.audit.data", "vlmbias.audit.embed", "vlmbias.mitigate.acquire", "vlmbias.mitigate.label",
            "vlmbias.mitigate.finetune", "vlmbias.mitigate.compare", "vlmbias.experiments",
            "vlmbias.report"} <= set(cmds)
    res = f"{config['results_dir']}/q"
    for words in (w for ws in cmds.values() for w in ws):
        assert not {"touch", "INJECTED", "$(touch", "`touch"} & set(words), words
        assert words[-2:] == ["2>&1"] or words[-3] == ">", words  # the log redirect is still the last thing
    (finetune,) = cmds["vlmbias.mitigate.finetune"]
    assert arg(finetune, "--base") == config["models"]["tiny"]["name"]
    assert arg(finetune, "--out") == f"{res}/mitigation/adapters/lora"
    (acquire,) = cmds["vlmbias.mitigate.acquire"]
    assert arg(acquire, "--out-dir") == f"{res}/mitigation/acquired/images"
    compare = cmds["vlmbias.mitigate.compare"][0]
    methods = [i for i, w in enumerate(compare) if w == "--method"]
    assert [compare[i + 1] for i in methods] == ["prompt", "lora"]  # a list param: one word per element
    assert compare[methods[0] + 2] == f"{res}/metrics/ff/tiny~prompt/jobs_summary.csv"
    archi = next(w for w in cmds["vlmbias.experiments"] if w[w.index("-m") + 2] == "architecture")
    assert arg(archi, "--classes") == f"tiny={res}/metrics/ff/tiny/jobs_classes.csv"
    embed = next(w for w in cmds["vlmbias.audit.embed"] if "images" in w)
    assert arg(embed, "--max-pixels") == "40000000" and arg(embed, "--manifest") == f"{res}/data/ff/manifest.parquet"


def test_real_run_with_nasty_paths(nasty):
    """The audit chain of the tiny model (manifest, both embeddings, retrieval, metrics, figures), for
    real, with NASTY in every path."""
    wd, config = nasty
    res = wd / config["results_dir"] / "q"
    run = snakemake(wd, f"{config['results_dir']}/q/figures/ff/tiny/jobs")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = res / "metrics/ff/tiny/jobs_summary.csv"
    assert summary.is_file() and set(summary.read_text().splitlines()[0].split(",")) >= {"fd", "ndkl_dataset"}
    assert any((res / "figures/ff/tiny/jobs").glob("grid_*.png"))
    assert not [p for p in wd.rglob("INJECTED*")]  # nothing ran that the config did not ask for
