# The thesis' experiments (4.6) that are more than query sets: the architecture comparison and the
# training-data comparison, each on any list of models (mitigated variants included).
EXP = config.get("experiments") or {}


def experiment_classes(name):
    spec = EXP[name]
    models = spec.get("models") or [spec["model"]]
    return {m: [f"{RES}/metrics/{spec['dataset']}/{m}/{q}_classes.csv" for q in spec["query_sets"]] for m in models}


rule architecture:
    input:
        lambda w: [f for files in experiment_classes("architecture").values() for f in files],
    output:
        report(f"{RES}/experiments/architecture.csv", caption="../report/experiments.rst", category="Experiments"),
    params:
        classes=lambda w: [f"{m}={f}" for m, files in experiment_classes("architecture").items() for f in files],
        k=EXP.get("architecture", {}).get("k", 20),
    threads: 1
    resources:
        **rule_resources("architecture"),
    log:
        f"{RES}/logs/experiments/architecture.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.experiments architecture --classes {params.classes:q} --k {params.k:q} --out {output:q} > {log:q} 2>&1"


rule training_data:
    input:
        labels=f"{vconfig.fold_dir(config, 0)}/labels/distribution.csv",  # with repeated splits: fold 0's set
        classes=lambda w: experiment_classes("training_data")[EXP["training_data"]["model"]],
    output:
        report(f"{RES}/experiments/training_data.csv", caption="../report/experiments.rst", category="Experiments"),
    params:
        k=EXP.get("training_data", {}).get("k", 20),
    threads: 1
    resources:
        **rule_resources("training_data"),
    log:
        f"{RES}/logs/experiments/training_data.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.experiments training-data --labels {input.labels:q} --classes {input.classes:q} --k {params.k:q}"
        " --out {output:q} > {log:q} 2>&1"
