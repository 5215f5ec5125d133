import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vlmbias import VlmbiasError
from vlmbias import config as vconfig

try:
    vconfig.validate(config)  # readable errors that name the key
except VlmbiasError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None
validate(config, "../schemas/config.schema.yaml")  # fills in the schema's defaults

RES = vconfig.results_root(config)
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
    dataset="[A-Za-z0-9][A-Za-z0-9_.-]*",
    model="[A-Za-z0-9][A-Za-z0-9_.~-]*",
    qset="[A-Za-z0-9][A-Za-z0-9_.-]*",


def as_json(obj):
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def dataset_inputs(wildcards):
    return [vconfig.world_data_dir(config)] if config["datasets"][wildcards.dataset].get("world") else []


def model_inputs(wildcards):
    base, method = vconfig.split_variant(wildcards.model)
    world = config["models"][base].get("world")
    inputs = [vconfig.world_model_dir(config, world)] if world else []
    if method:
        inputs += vconfig.method_inputs(config, method)
    return inputs


def audit_targets():
    return expand(
        [f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_summary.csv", f"{RES}/figures/{{dataset}}/{{model}}/{{qset}}"],
        dataset=SELECTED["datasets"],
        model=SELECTED["models"],
        qset=SELECTED["query_sets"],
    ) + expand(f"{RES}/calibration/{{model}}/checks.csv", model=vconfig.calibration_models(config)) + (
        [f"{vconfig.mitigation_dir(config)}/comparison.csv"] if config.get("mitigation") else []
    ) + [f"{RES}/experiments/{name}.csv" for name in (config.get("experiments") or {})] + [
        f"{RES}/run_info/versions.csv"]
