# Mitigation: acquire fine-tuning images -> label them -> balanced set -> LoRA adapters; each
# method is then audited as the model "<base>~<method>" by the audit rules, its quality measured,
# and everything compared with the base model.
MIT = vconfig.mitigation_dir(config)


rule split:
    output:
        f"{MIT}/split.csv",
    params:
        qsets=lambda w: as_json(vconfig.mitigation_query_sets(config)),
        spec=lambda w: as_json(vconfig.split_spec(config)),
    log:
        f"{RES}/logs/split/split.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.split --query-sets-json {params.qsets:q} --spec-json {params.spec:q}"
        " --out {output:q} > {log:q} 2>&1"


def acquire_inputs(wildcards):
    source = (config["mitigation"].get("acquire") or {}).get("source")
    return [vconfig.world_data_dir(config)] if source == "world" else []


rule acquire:
    input:
        acquire_inputs,
    output:
        f"{MIT}/acquired/acquired.parquet",
    params:
        spec=lambda w: as_json(vconfig.acquire_spec(config)),  # held-out concepts excluded
        world=lambda w, input: ["--world", input[0]] if input else [],
        folder=f"{MIT}/acquired/images",
        max_pixels=MAX_PIXELS,
    threads: 1
    resources:
        **rule_resources("acquire"),
    log:
        f"{RES}/logs/acquire/acquire.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.acquire --spec-json {params.spec:q} --out-dir {params.folder:q} --manifest {output:q}"
        " {params.world:q} --max-pixels {params.max_pixels:q} > {log:q} 2>&1"


rule label:
    input:
        rules.acquire.output[0],
    output:
        labels=f"{MIT}/labels/labels.parquet",
        dropped=f"{MIT}/labels/dropped.csv",
        distribution=f"{MIT}/labels/distribution.csv",
        balanced=f"{MIT}/labels/balanced.parquet",
    params:
        spec=as_json(config.get("mitigation", {}).get("label", {})),
        max_pixels=MAX_PIXELS,
    threads: 1
    resources:
        **rule_resources("label"),
    log:
        f"{RES}/logs/label/label.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.label --spec-json {params.spec:q} --acquired {input:q} --out-labels {output.labels:q}"
        " --out-dropped {output.dropped:q} --out-distribution {output.distribution:q}"
        " --out-balanced {output.balanced:q} --max-pixels {params.max_pixels:q} > {log:q} 2>&1"


rule balance:
    input:
        rules.label.output.labels,
    output:
        f"{MIT}/labels/balanced_{{method}}.parquet",
    params:
        spec=lambda w: as_json(vconfig.method_spec(config, w.method)["balanced"]),
    log:
        f"{RES}/logs/balance/{{method}}.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.balance --labels {input:q} --spec-json {params.spec:q} --out {output:q} > {log:q} 2>&1"


def finetune_inputs(wildcards):
    base = config["mitigation"]["base_model"]
    world = config["models"][base].get("world")
    method = getattr(wildcards, "method", None)
    own = method and "balanced" in vconfig.method_spec(config, method)  # the method's own balanced set
    train = f"{MIT}/labels/balanced_{method}.parquet" if own else rules.label.output.balanced
    return {"train": train, "model": [vconfig.world_model_dir(config, world)] if world else []}


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        directory(f"{MIT}/adapters/{{method}}"),
    params:
        base=lambda w: vconfig.model_spec(config, config["mitigation"]["base_model"])["name"],
        spec=lambda w: as_json(vconfig.finetune_spec(config, w.method)),
        max_pixels=MAX_PIXELS,
        device=config["device"],
    threads: config["threads"]
    resources:
        **rule_resources("finetune"),
    log:
        f"{RES}/logs/finetune/{{method}}.log",
    benchmark:
        f"{RES}/benchmarks/finetune/{{method}}.tsv"
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.finetune --base {params.base:q} --train {input.train:q} --spec-json {params.spec:q}"
        " --out {output:q} --threads {threads:q} --max-pixels {params.max_pixels:q} --device {params.device:q}"
        " --no-progress > {log:q} 2>&1"


def reference_inputs(wildcards):
    # a named dataset is read where it lies (its spec goes in as JSON); the world's corpus is a rule output
    named = (vconfig.reference_dataset(config, wildcards.method) if method_kind(wildcards) == "bendvlm"
             else vconfig.caption_dataset(config, wildcards.method))
    inputs = {"model": finetune_inputs(wildcards)["model"]}
    if named is None:
        inputs["world"] = vconfig.world_data_dir(config)
    return inputs


def method_kind(wildcards):
    return vconfig.method_spec(config, wildcards.method)["kind"]


def fitting_source(wildcards, input):
    """--world <folder>, or the named dataset's spec: --reference-json (bendvlm) / --captions-json (saner)."""
    if "world" in input.keys():
        return ["--world", input.world]
    if method_kind(wildcards) == "bendvlm":
        return ["--reference-json", as_json(vconfig.dataset_spec(config, vconfig.reference_dataset(config, wildcards.method)))]
    return ["--captions-json", as_json(vconfig.dataset_spec(config, vconfig.caption_dataset(config, wildcards.method)))]


rule bendvlm_reference:
    input:
        unpack(reference_inputs),
    output:
        directory(f"{MIT}/reference/{{method}}"),
    params:
        base=lambda w: as_json(vconfig.model_spec(config, config["mitigation"]["base_model"])),
        spec=lambda w: as_json({"concepts": vconfig.fitting_concepts(config),
                                "attributes": vconfig.method_spec(config, w.method).get("attributes", ["gender"])}),
        source=fitting_source,
        device=config["device"],
        max_pixels=MAX_PIXELS,
    log:
        f"{RES}/logs/bendvlm_reference/{{method}}.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.bendvlm --model-json {params.base:q} {params.source:q} --spec-json {params.spec:q}"
        " --device {params.device:q} --max-pixels {params.max_pixels:q} --out {output:q} > {log:q} 2>&1"


rule saner_train:
    input:
        unpack(reference_inputs),
    output:
        directory(f"{MIT}/saner/{{method}}"),
    params:
        base=lambda w: as_json(vconfig.model_spec(config, config["mitigation"]["base_model"])),
        concepts=lambda w: as_json({"concepts": vconfig.fitting_concepts(config),
                                    "held_out": vconfig.held_out_concepts(config)}),
        spec=lambda w: as_json({k: v for k, v in vconfig.method_spec(config, w.method).items()
                                if k not in ("kind", "captions")}),
        source=fitting_source,
        device=config["device"],
        max_pixels=MAX_PIXELS,
    threads: 1  # a layer this small trains fastest on one thread
    log:
        f"{RES}/logs/saner_train/{{method}}.log",
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
        directory(f"{MIT}/prompts/{{method}}"),
    params:
        base=lambda w: vconfig.model_spec(config, config["mitigation"]["base_model"])["name"],
        spec=lambda w: as_json({k: v for k, v in vconfig.method_spec(config, w.method).items() if k != "kind"}),
        device=config["device"],
        max_pixels=MAX_PIXELS,
    threads: config["threads"]
    log:
        f"{RES}/logs/prompt_array_train/{{method}}.log",
    conda:
        "../../envs/mitigate.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.prompt_array --base {params.base:q} --train {input.train:q} --spec-json {params.spec:q}"
        " --threads {threads:q} --device {params.device:q} --max-pixels {params.max_pixels:q} --out {output:q}"
        " > {log:q} 2>&1"


def quality_inputs(wildcards):
    ds = config["mitigation"]["dataset"]
    folder = f"{RES}/embeddings/{ds}/{vconfig.image_model(config, wildcards.model)}"
    inputs = {"images": f"{folder}/images.npy", "image_rows": f"{folder}/images.parquet",
              "manifest": f"{RES}/data/{ds}/manifest.parquet", "model": model_inputs(wildcards),
              "split": rules.split.output[0]}
    if config["datasets"][ds].get("world"):
        inputs["world"] = vconfig.world_data_dir(config)
    return inputs


rule quality:
    input:
        unpack(quality_inputs),
    output:
        f"{MIT}/quality/{{model}}.csv",
    params:
        model=lambda w: as_json(vconfig.model_spec(config, w.model)),
        world=lambda w, input: ["--world", input.world] if "world" in input.keys() else [],
        captions=lambda w: (["--captions-json", as_json(vconfig.dataset_spec(config, vconfig.caption_dataset(config)))]
                            if vconfig.caption_dataset(config) else []),
        transform=lambda w: as_json(vconfig.quality_transform(config, w.model)),
        device=config["device"],
        max_pixels=MAX_PIXELS,
    threads: config["threads"]
    resources:
        **rule_resources("quality"),
    log:
        f"{RES}/logs/quality/{{model}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.quality --model-json {params.model:q} --model-name {wildcards.model:q}"
        " --images-npy {input.images:q} --images-table {input.image_rows:q} --manifest {input.manifest:q}"
        " {params.world:q} {params.captions:q} --device {params.device:q} --max-pixels {params.max_pixels:q}"
        " --split {input.split:q} --transform-json {params.transform:q} --out {output:q} > {log:q} 2>&1"


def compare_inputs(wildcards):
    mit, base = config["mitigation"], config["mitigation"]["base_model"]
    summary = lambda model: [f"{RES}/metrics/{mit['dataset']}/{model}/{q}_summary.csv" for q in mit["query_sets"]]
    models = [base, *vconfig.variant_names(config)]
    return {"base": summary(base), "methods": [f for v in models[1:] for f in summary(v)],
            "quality": [f"{MIT}/quality/{m}.csv" for m in models], "split": rules.split.output[0]}


def method_args(wildcards, input):
    mit = config["mitigation"]
    n = len(mit["query_sets"])
    files = list(input.methods)
    return [arg for i, m in enumerate(mit["methods"]) for arg in ["--method", m, *files[i * n:(i + 1) * n]]]


rule compare:
    input:
        unpack(compare_inputs),
    output:
        table=report(f"{MIT}/comparison.csv", caption="../report/comparison.rst", category="Mitigation"),
        summary=report(f"{MIT}/comparison_summary.csv", caption="../report/comparison.rst", category="Mitigation"),
        quality=report(f"{MIT}/quality.csv", caption="../report/quality.rst", category="Mitigation"),
        leaderboard=report(f"{MIT}/leaderboard.csv", caption="../report/comparison.rst", category="Mitigation"),
        figures=report(directory(f"{MIT}/figures"), patterns=["{name}.png"], caption="../report/comparison.rst",
                       category="Mitigation"),
    params:
        methods=method_args,
        k=config.get("mitigation", {}).get("k", 20),
    threads: 1
    resources:
        **rule_resources("compare"),
    log:
        f"{RES}/logs/compare/compare.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.mitigate.compare --base {input.base:q} {params.methods:q} --quality {input.quality:q} --k {params.k:q}"
        " --split {input.split:q} --out-leaderboard {output.leaderboard:q}"
        " --out-table {output.table:q} --out-summary {output.summary:q} --out-quality {output.quality:q}"
        " --out-figures {output.figures:q} > {log:q} 2>&1"
