# Mitigation: acquire fine-tuning images -> label them -> balanced set -> LoRA adapters; each
# method is then audited as the model "<base>~<method>" by the audit rules, its quality measured,
# and everything compared with the base model.
MIT = vconfig.mitigation_dir(config)
# Repeated splits (mitigation.split.folds > 1): the split, everything fitted on it and the comparison
# exist once per fold, under mitigation/folds/{fold}/ (wildcard `fold`), and rule `compare_folds`
# averages the folds. With one fold (the default) the paths are the single split's, no wildcard.
# A part dataset that mitigation uses is redrawn per fold too (mitigation.split.images): fold f reads
# `<part>~fold<f>` (vconfig.fold_dataset), and the base model is audited on each fold's images.
FOLDS = vconfig.n_folds(config)
MITF = MIT if FOLDS == 1 else f"{MIT}/folds/{{fold}}"
LOGF = "" if FOLDS == 1 else "fold{fold}/"


wildcard_constraints:
    fold="[0-9]+",


def fold_of(wildcards):
    return int(getattr(wildcards, "fold", 0))


def fold_dir(wildcards):
    return vconfig.fold_dir(config, fold_of(wildcards))


rule split:
    output:
        f"{MITF}/split.csv",
    params:
        qsets=lambda w: as_json(list(vconfig.mitigation_query_sets(config).items())),  # pairs: as_json sorts keys
        spec=lambda w: as_json(vconfig.split_spec(config)),
        fold=lambda w: ["--fold", w.fold] if FOLDS > 1 else [],
    log:
        f"{RES}/logs/split/{LOGF}split.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.split --query-sets-json {params.qsets:q} --spec-json {params.spec:q}"
        " {params.fold:q} --out {output:q} > {log:q} 2>&1"


def world_search_inputs(wildcards):
    # the world's search stand-in (a folder + label CSV) is a rule output when acquire / label read it
    return [vconfig.world_data_dir(config)] if vconfig.uses_world_search(config) else []


rule acquire:
    input:
        world_search_inputs,
    output:
        f"{MITF}/acquired/acquired.parquet",
    params:
        spec=lambda w: as_json(vconfig.acquire_spec(config, fold_of(w))),  # held-out concepts excluded
        folder=lambda w: f"{fold_dir(w)}/acquired/images",
        max_pixels=MAX_PIXELS,
    threads: 1
    resources:
        **rule_resources("acquire"),
    log:
        f"{RES}/logs/acquire/{LOGF}acquire.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.acquire --spec-json {params.spec:q} --out-dir {params.folder:q} --manifest {output:q}"
        " --max-pixels {params.max_pixels:q} > {log:q} 2>&1"


rule label:
    input:
        acquired=rules.acquire.output[0],
        world=world_search_inputs,
    output:
        labels=f"{MITF}/labels/labels.parquet",
        dropped=f"{MITF}/labels/dropped.csv",
        distribution=f"{MITF}/labels/distribution.csv",
        balanced=f"{MITF}/labels/balanced.parquet",
    params:
        spec=lambda w: as_json(vconfig.label_spec(config)),
        max_pixels=MAX_PIXELS,
    threads: 1
    resources:
        **rule_resources("label"),
    log:
        f"{RES}/logs/label/{LOGF}label.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.label --spec-json {params.spec:q} --acquired {input.acquired:q} --out-labels {output.labels:q}"
        " --out-dropped {output.dropped:q} --out-distribution {output.distribution:q}"
        " --out-balanced {output.balanced:q} --max-pixels {params.max_pixels:q} > {log:q} 2>&1"


rule balance:
    input:
        rules.label.output.labels,
    output:
        f"{MITF}/labels/balanced_{{method}}.parquet",
    params:
        spec=lambda w: as_json(vconfig.method_spec(config, w.method)["balanced"]),
    log:
        f"{RES}/logs/balance/{LOGF}{{method}}.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.balance --labels {input:q} --spec-json {params.spec:q} --out {output:q} > {log:q} 2>&1"


def finetune_inputs(wildcards):
    base = config["mitigation"]["base_model"]
    world = config["models"][base].get("world")
    method = getattr(wildcards, "method", None)
    own = method and "balanced" in vconfig.method_spec(config, method)  # the method's own balanced set
    labels = f"{fold_dir(wildcards)}/labels"
    train = f"{labels}/balanced_{method}.parquet" if own else f"{labels}/balanced.parquet"
    return {"train": train, "model": [vconfig.world_model_dir(config, world)] if world else []}


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        directory(f"{MITF}/adapters/{{method}}"),
    params:
        base=lambda w: vconfig.model_spec(config, config["mitigation"]["base_model"])["name"],
        spec=lambda w: as_json(vconfig.finetune_spec(config, w.method)),
        max_pixels=MAX_PIXELS,
        device=config["device"],
    threads: config["threads"]
    resources:
        **rule_resources("finetune"),
    log:
        f"{RES}/logs/finetune/{LOGF}{{method}}.log",
    benchmark:
        f"{RES}/benchmarks/finetune/{LOGF}{{method}}.tsv"
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.finetune --base {params.base:q} --train {input.train:q} --spec-json {params.spec:q}"
        " --out {output:q} --threads {threads:q} --max-pixels {params.max_pixels:q} --device {params.device:q}"
        " --no-progress > {log:q} 2>&1"


def fitting_dataset(wildcards):
    """The dataset a bendvlm / saner method fits on, in this fold (a part redrawn per fold: its fold's name)."""
    if method_kind(wildcards) == "bendvlm":
        return vconfig.fold_dataset(config, vconfig.reference_dataset(config, wildcards.method), fold_of(wildcards))
    return vconfig.caption_dataset(config, wildcards.method)


def reference_inputs(wildcards):
    # a named dataset is read where it lies (its spec goes in as JSON); the world's files are a rule output
    named = fitting_dataset(wildcards)
    inputs = {"model": finetune_inputs(wildcards)["model"]}
    if vconfig.uses_world_data(config, named):  # one of the world's files (or a part of its test split)
        inputs["data"] = vconfig.world_data_dir(config)
    if vconfig.dataset_entry(config, named)["type"] == "part":  # the split written out beside the audited part's
        inputs["part"] = f"{RES}/data/{named}/manifest.parquet"
    return inputs


def method_kind(wildcards):
    return vconfig.method_spec(config, wildcards.method)["kind"]


def fitting_source(wildcards, input):
    """The named dataset's spec: --reference-json (bendvlm) / --captions-json (saner)."""
    flag = "--reference-json" if method_kind(wildcards) == "bendvlm" else "--captions-json"
    return [flag, as_json(vconfig.dataset_spec(config, fitting_dataset(wildcards)))]


rule bendvlm_reference:
    input:
        unpack(reference_inputs),
    output:
        directory(f"{MITF}/reference/{{method}}"),
    params:
        base=lambda w: as_json(vconfig.model_spec(config, config["mitigation"]["base_model"])),
        spec=lambda w: as_json({"concepts": vconfig.fitting_concepts(config, fold_of(w)),
                                "attributes": vconfig.method_spec(config, w.method).get("attributes", ["gender"])}),
        source=fitting_source,
        device=config["device"],
        max_pixels=MAX_PIXELS,
    log:
        f"{RES}/logs/bendvlm_reference/{LOGF}{{method}}.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.bendvlm --model-json {params.base:q} {params.source:q} --spec-json {params.spec:q}"
        " --device {params.device:q} --max-pixels {params.max_pixels:q} --out {output:q} > {log:q} 2>&1"


rule saner_train:
    input:
        unpack(reference_inputs),
    output:
        directory(f"{MITF}/saner/{{method}}"),
    params:
        base=lambda w: as_json(vconfig.model_spec(config, config["mitigation"]["base_model"])),
        concepts=lambda w: as_json({"concepts": vconfig.fitting_concepts(config, fold_of(w)),
                                    "held_out": vconfig.held_out_concepts(config, fold_of(w))}),
        spec=lambda w: as_json({k: v for k, v in vconfig.method_spec(config, w.method).items()
                                if k not in ("kind", "captions")}),
        source=fitting_source,
        device=config["device"],
        max_pixels=MAX_PIXELS,
    threads: 1  # a layer this small trains fastest on one thread
    log:
        f"{RES}/logs/saner_train/{LOGF}{{method}}.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.saner --model-json {params.base:q} {params.source:q}"
        " --concepts-json {params.concepts:q} --spec-json {params.spec:q} --threads {threads:q}"
        " --device {params.device:q} --max-pixels {params.max_pixels:q} --out {output:q} > {log:q} 2>&1"


rule prompt_array_train:
    input:
        unpack(finetune_inputs),
    output:
        directory(f"{MITF}/prompts/{{method}}"),
    params:
        base=lambda w: vconfig.model_spec(config, config["mitigation"]["base_model"])["name"],
        spec=lambda w: as_json({k: v for k, v in vconfig.method_spec(config, w.method).items() if k != "kind"}),
        device=config["device"],
        max_pixels=MAX_PIXELS,
    threads: config["threads"]
    log:
        f"{RES}/logs/prompt_array_train/{LOGF}{{method}}.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.prompt_array --base {params.base:q} --train {input.train:q} --spec-json {params.spec:q}"
        " --threads {threads:q} --device {params.device:q} --max-pixels {params.max_pixels:q} --out {output:q}"
        " > {log:q} 2>&1"


def quality_inputs(wildcards):
    ds = vconfig.mitigation_dataset(config, fold_of(wildcards))
    folder = f"{RES}/embeddings/{ds}/{vconfig.image_model(config, wildcards.model)}"
    inputs = {"images": f"{folder}/images.npy", "image_rows": f"{folder}/images.parquet",
              "manifest": f"{RES}/data/{ds}/manifest.parquet", "model": model_inputs(wildcards),
              "split": f"{fold_dir(wildcards)}/split.csv"}
    captions = vconfig.quality_caption_dataset(config)
    if captions and config["datasets"][captions].get("world"):  # the world's held-out caption set
        inputs["world"] = vconfig.world_data_dir(config)
    return inputs


rule quality:
    input:
        unpack(quality_inputs),
    output:
        f"{MITF}/quality/{{model}}.csv",
    params:
        model=lambda w: as_json(vconfig.model_spec(config, w.model)),
        captions=lambda w: (["--captions-json", as_json(vconfig.dataset_spec(config, vconfig.quality_caption_dataset(config)))]
                            if vconfig.quality_caption_dataset(config) else []),
        transform=lambda w: as_json(vconfig.quality_transform(config, w.model)),
        device=config["device"],
        max_pixels=MAX_PIXELS,
    threads: config["threads"]
    resources:
        **rule_resources("quality"),
    log:
        f"{RES}/logs/quality/{LOGF}{{model}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.quality --model-json {params.model:q} --model-name {wildcards.model:q}"
        " --images-npy {input.images:q} --images-table {input.image_rows:q} --manifest {input.manifest:q}"
        " {params.captions:q} --device {params.device:q} --max-pixels {params.max_pixels:q}"
        " --split {input.split:q} --transform-json {params.transform:q} --out {output:q} > {log:q} 2>&1"


def compare_inputs(wildcards):
    mit, base = config["mitigation"], config["mitigation"]["base_model"]
    ds = vconfig.mitigation_dataset(config, fold_of(wildcards))  # with parts redrawn per fold, this fold's images
    summary = lambda model: [f"{RES}/metrics/{ds}/{model}/{q}_summary.csv" for q in mit["query_sets"]]
    models = [base, *vconfig.variant_names(config, fold_of(wildcards))]  # in mitigation.methods order
    folder = fold_dir(wildcards)
    return {"base": summary(base), "methods": [f for v in models[1:] for f in summary(v)],
            "quality": [f"{folder}/quality/{m}.csv" for m in models], "split": f"{folder}/split.csv"}


def method_args(wildcards, input):
    mit = config["mitigation"]
    n = len(mit["query_sets"])
    files = list(input.methods)
    return [arg for i, m in enumerate(mit["methods"]) for arg in ["--method", m, *files[i * n:(i + 1) * n]]]


rule compare:
    input:
        unpack(compare_inputs),
    output:
        table=report(f"{MITF}/comparison.csv", caption="../report/comparison.rst", category="Mitigation"),
        summary=report(f"{MITF}/comparison_summary.csv", caption="../report/comparison.rst", category="Mitigation"),
        quality=report(f"{MITF}/quality.csv", caption="../report/quality.rst", category="Mitigation"),
        leaderboard=report(f"{MITF}/leaderboard.csv", caption="../report/comparison.rst", category="Mitigation"),
        figures=report(directory(f"{MITF}/figures"), patterns=["{name}.png"], caption="../report/comparison.rst",
                       category="Mitigation"),
    params:
        methods=method_args,
        k=config.get("mitigation", {}).get("k", 20),
    threads: 2  # the before/after figures are drawn in this many processes
    resources:
        **rule_resources("compare"),
    log:
        f"{RES}/logs/compare/{LOGF}compare.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.compare --base {input.base:q} {params.methods:q} --quality {input.quality:q} --k {params.k:q}"
        " --processes {threads:q}"
        " --split {input.split:q} --out-leaderboard {output.leaderboard:q}"
        " --out-table {output.table:q} --out-summary {output.summary:q} --out-quality {output.quality:q}"
        " --out-figures {output.figures:q} > {log:q} 2>&1"


if FOLDS > 1:

    rule compare_folds:
        input:
            tables=expand(f"{MIT}/folds/{{fold}}/comparison.csv", fold=range(FOLDS)),
            summaries=expand(f"{MIT}/folds/{{fold}}/comparison_summary.csv", fold=range(FOLDS)),
            qualities=expand(f"{MIT}/folds/{{fold}}/quality.csv", fold=range(FOLDS)),
        output:
            table=report(f"{MIT}/comparison.csv", caption="../report/comparison.rst", category="Mitigation"),
            summary=report(f"{MIT}/comparison_summary.csv", caption="../report/comparison.rst", category="Mitigation"),
            quality=report(f"{MIT}/quality.csv", caption="../report/quality.rst", category="Mitigation"),
            leaderboard=report(f"{MIT}/leaderboard.csv", caption="../report/comparison.rst", category="Mitigation"),
        threads: 1
        resources:
            **rule_resources("compare"),
        log:
            f"{RES}/logs/compare/folds.log",
        conda:
            "../../envs/report.yaml"
        shell:
            "{PY} -m vlmbias.mitigate.folds --tables {input.tables:q} --summaries {input.summaries:q}"
            " --qualities {input.qualities:q} --out-table {output.table:q} --out-summary {output.summary:q}"
            " --out-quality {output.quality:q} --out-leaderboard {output.leaderboard:q} > {log:q} 2>&1"
