import json
import shlex
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vlmbias import VlmbiasError
from vlmbias import config as vconfig

try:
    vconfig.validate(config)  # readable errors that name the key
    vconfig.check_paths(config)  # dataset roots, label CSVs and local models exist: fail at `snakemake -n`
except VlmbiasError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None
validate(config, "../schemas/config.schema.yaml")  # fills in the schema's defaults

RES = vconfig.results_root(config)

# `--cores` beyond this machine's CPUs is capped for local runs (threads of the rules follow); a
# cluster executor's --cores/--jobs mean jobs on other nodes and stay as given.
if workflow.local_exec:
    from vlmbias.cpus import local_cores

    _asked = workflow.global_resources["_cores"].value
    _cores = local_cores(_asked)
    if _asked is not None and _cores < _asked:
        print(f"--cores {_asked}: this machine has {_cores} usable CPU(s); scheduling jobs on {_cores}",
              file=sys.stderr)
        workflow.global_resources["_cores"] = _cores
_STARTED = time.time()  # logs written since then belong to this run


onerror:
    # each failed job's one-sentence error on the console, also without --show-failed-logs
    from vlmbias.io import failed_job_errors

    for _log, _line in failed_job_errors(f"{RES}/logs", _STARTED - 1):
        print(f"{_line}  [{_log}]", file=sys.stderr)


MAX_PIXELS = config["images"]["max_pixels"]  # the image gate's one limit, passed to every rule that opens images
SELECTED = vconfig.audit_selection(config)


def _python():
    # Under --sdm conda the env's own interpreter must run the modules; otherwise the one running snakemake.
    try:
        if "conda" in {str(m).lower() for m in workflow.deployment_settings.deployment_method}:
            return "python"
    except AttributeError:
        pass
    return sys.executable


# Every rule runs `{PY} -m vlmbias.<module>`: src/ on the path, so the package need not be installed in an env.
# Quoted like every value in the rules' shell commands: a checkout path with a space must not split.
PY = f"PYTHONPATH={shlex.quote(workflow.basedir + '/src')}\"${{PYTHONPATH:+:$PYTHONPATH}}\" {shlex.quote(_python())}"


wildcard_constraints:
    dataset="[A-Za-z0-9][A-Za-z0-9_.-]*(~fold[0-9]+)?",  # a part redrawn in fold f: <part>~fold<f>
    model="[A-Za-z0-9][A-Za-z0-9_.~-]*",
    qset="[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard="[0-9]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def dataset_inputs(wildcards):
    # the world's data folder, for a world dataset or a part of one (a part follows its `of`)
    return [vconfig.world_data_dir(config)] if vconfig.uses_world_data(config, wildcards.dataset) else []


def model_inputs(wildcards):
    base, method, fold = vconfig.split_variant_fold(wildcards.model)
    world = config["models"][base].get("world")
    inputs = [vconfig.world_model_dir(config, world)] if world else []
    if method:
        inputs += vconfig.method_inputs(config, method, fold)
    return inputs


def zeroshot_targets():
    zs = config.get("zeroshot")
    if not zs:
        return []
    return expand(f"{RES}/zeroshot/{{dataset}}/{{model}}/accuracy.csv", dataset=zs.get("datasets") or SELECTED["datasets"],
                  model=zs.get("models") or SELECTED["models"])


def audit_targets():
    return zeroshot_targets() + expand(
        [f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_summary.csv", f"{RES}/figures/{{dataset}}/{{model}}/{{qset}}"],
        dataset=SELECTED["datasets"],
        model=SELECTED["models"],
        qset=SELECTED["query_sets"],
    ) + expand(f"{RES}/calibration/{{model}}/checks.csv", model=vconfig.calibration_models(config)) + (
        [f"{vconfig.mitigation_dir(config)}/comparison.csv"] if config.get("mitigation") else []
    ) + [f"{RES}/experiments/{name}.csv" for name in (config.get("experiments") or {})] + [
        f"{RES}/run_info/versions.csv", f"{RES}/summary/summary.rst"] + leaderboard_targets() + published_targets()


def published_targets():
    # ours beside the published numbers, when the config runs a whole protocol (docs/protocols.md)
    return [f"{RES}/leaderboard/published_comparison.csv"] if vconfig.protocol_query_sets(config) else []


def leaderboard_targets():
    # one table across the audited models; with a single model there is nothing to set side by side
    return [f"{RES}/leaderboard/models.csv"] if vconfig.leaderboard_models(config) else []


# Scheduler hints, so that a cluster profile (profiles/slurm) can place every job: memory (MB) and
# wall time (minutes) per rule, doubled on each retry (`restart-times`: a job killed for memory or
# time gets more), and one GPU for the rules that load a model on `device` when that is a CUDA
# device (the SLURM plugin turns `gpu=1` into `--gpus=1`; locally an undeclared `gpu` limits nothing).
# Override per rule from the command line or a profile: `--set-resources embed_images:mem_mb=32000`,
# `--set-threads embed_images=8`.
RULE_RESOURCES = {  # rule: (mem_mb, runtime in minutes), for the first attempt
    "world_generate": (2000, 30),
    "world_train": (4000, 120),
    "calibrate": (2000, 30),
    "dataset_manifest": (2000, 30),
    "embed_images": (8000, 240),
    "merge_embeddings": (4000, 30),
    "embed_queries": (4000, 30),
    "retrieve": (4000, 30),
    "metrics": (2000, 30),
    "figures": (2000, 30),
    "zeroshot": (4000, 30),
    "acquire": (2000, 120),
    "label": (4000, 120),
    "finetune": (8000, 480),
    "quality": (4000, 60),
    "compare": (2000, 30),
    "architecture": (2000, 30),
    "training_data": (2000, 30),
    "run_info": (1000, 10),
    "model_leaderboard": (2000, 30),
}
GPU_RULES = {"embed_images", "embed_queries", "finetune", "quality", "zeroshot"}  # the rules that run a model on `device`


def uses_gpu(device=None):
    return str(config["device"] if device is None else device).startswith("cuda")


def rule_resources(rule):
    """`resources: **rule_resources("<rule>")`: mem_mb, runtime and gpu for one rule (see RULE_RESOURCES)."""
    mem_mb, minutes = RULE_RESOURCES[rule]
    return {
        "mem_mb": lambda wildcards, attempt: mem_mb * attempt,
        "runtime": lambda wildcards, attempt: minutes * attempt,
        "gpu": 1 if rule in GPU_RULES and uses_gpu() else 0,
    }
