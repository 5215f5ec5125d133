# The audit: dataset manifest -> image embeddings (once per dataset x model) -> query embeddings
# (per model x query set) -> top-k rankings -> disparity metrics.


# A checkpoint: with embed.shard_size set, the number of embedding shards is read from the manifest.
checkpoint dataset_manifest:
    input:
        dataset_inputs,
    output:
        manifest=f"{RES}/data/{{dataset}}/manifest.parquet",
        distribution=f"{RES}/data/{{dataset}}/distribution.csv",
        missing=f"{RES}/data/{{dataset}}/missing.csv",
    params:
        spec=lambda w: as_json(vconfig.dataset_spec(config, w.dataset)),
        max_missing=lambda w: vconfig.dataset_entry(config, w.dataset).get("max_missing_fraction", 0.0),
    threads: 1
    resources:
        **rule_resources("dataset_manifest"),
    log:
        f"{RES}/logs/dataset_manifest/{{dataset}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.audit.data --spec-json {params.spec:q} --max-missing-fraction {params.max_missing:q}"
        " --manifest {output.manifest:q} --distribution {output.distribution:q} --missing {output.missing:q} > {log:q} 2>&1"


from vlmbias.audit.shards import manifest_shard_count


# Image embedding, once per (dataset, model). With embed.shard_size set, `embed_images` runs once per
# shard of the manifest (shards/<i>.npy, .parquet, _skipped.parquet) and `merge_embeddings` joins the
# shards into the images.npy / images.parquet / skipped.csv every later rule reads; a failed shard
# reruns alone and finished shards are kept. Without it, `embed_images` writes those three directly.
SHARD_SIZE = vconfig.shard_size(config)
EMBED_DIR = f"{RES}/embeddings/{{dataset}}/{{model}}"
EMBED_OUT = (f"{EMBED_DIR}/shards/{{shard}}", f"{EMBED_DIR}/shards/{{shard}}_skipped.parquet") if SHARD_SIZE else (
    f"{EMBED_DIR}/images", f"{EMBED_DIR}/skipped.csv")
EMBED_JOB = "{dataset}_{model}_{shard}" if SHARD_SIZE else "{dataset}_{model}"


rule embed_images:
    input:
        manifest=rules.dataset_manifest.output.manifest,
        model=model_inputs,
    output:
        npy=f"{EMBED_OUT[0]}.npy",
        table=f"{EMBED_OUT[0]}.parquet",
        skipped=EMBED_OUT[1],
    params:
        model=lambda w: as_json(vconfig.model_spec(config, w.model)),
        device=config["device"],
        precision=config["embed"]["precision"],
        batch_size=config["embed"]["batch_size"],
        workers=config["embed"]["num_workers"],
        max_bad=config["embed"]["max_bad_fraction"],
        max_pixels=MAX_PIXELS,
        shard=lambda w: w.get("shard", 0),
        shard_size=SHARD_SIZE or 0,
    threads: config["threads"]
    resources:
        **rule_resources("embed_images"),
    log:
        f"{RES}/logs/embed_images/{EMBED_JOB}.log",
    benchmark:
        f"{RES}/benchmarks/embed_images/{EMBED_JOB}.tsv"
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.audit.embed images --model-json {params.model:q} --device {params.device:q}"
        " --precision {params.precision:q} --threads {threads:q} --manifest {input.manifest:q}"
        " --batch-size {params.batch_size:q} --num-workers {params.workers:q} --max-bad-fraction {params.max_bad:q}"
        " --max-pixels {params.max_pixels:q} --shard {params.shard:q} --shard-size {params.shard_size:q}"
        " --out-npy {output.npy:q} --out-table {output.table:q} --skipped {output.skipped:q} > {log:q} 2>&1"


def embedding_shards(wildcards):
    # how many shards the manifest makes is known once the dataset_manifest checkpoint has run
    manifest = checkpoints.dataset_manifest.get(dataset=wildcards.dataset).output.manifest
    n = manifest_shard_count(manifest, SHARD_SIZE)
    return expand(f"{EMBED_DIR}/shards/{{shard}}.npy", dataset=wildcards.dataset, model=wildcards.model, shard=range(n))


def embedding_shard_tables(wildcards):
    return [p[:-len(".npy")] + suffix for p in embedding_shards(wildcards) for suffix in (".parquet", "_skipped.parquet")]


if SHARD_SIZE:

    rule merge_embeddings:
        input:
            manifest=rules.dataset_manifest.output.manifest,
            shards=embedding_shards,
            tables=embedding_shard_tables,
        output:
            npy=f"{EMBED_DIR}/images.npy",
            table=f"{EMBED_DIR}/images.parquet",
            skipped=f"{EMBED_DIR}/skipped.csv",
        params:
            shard_size=SHARD_SIZE,
            max_bad=config["embed"]["max_bad_fraction"],
        threads: 1
        resources:
            **rule_resources("merge_embeddings"),
        log:
            f"{RES}/logs/merge_embeddings/{{dataset}}_{{model}}.log",
        conda:
            "../../envs/audit.yaml"
        shell:
            "{PY} -m vlmbias.audit.shards --manifest {input.manifest:q} --shard-size {params.shard_size:q}"
            " --shards {input.shards:q} --max-bad-fraction {params.max_bad:q} --out-npy {output.npy:q}"
            " --out-table {output.table:q} --skipped {output.skipped:q} > {log:q} 2>&1"


rule embed_queries:
    input:
        model=model_inputs,
    output:
        npy=f"{RES}/queries/{{model}}/{{qset}}.npy",
        table=f"{RES}/queries/{{model}}/{{qset}}.parquet",
    params:
        model=lambda w: as_json(vconfig.model_spec(config, w.model)),
        queries=lambda w: as_json(vconfig.query_set_spec(config, w.model, w.qset)),
        device=config["device"],
        precision=config["embed"]["precision"],
    threads: config["threads"]
    resources:
        **rule_resources("embed_queries"),
    log:
        f"{RES}/logs/embed_queries/{{model}}_{{qset}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.audit.embed queries --model-json {params.model:q} --device {params.device:q}"
        " --precision {params.precision:q} --threads {threads:q} --name {wildcards.qset:q}"
        " --queries-json {params.queries:q} --out-npy {output.npy:q} --out-table {output.table:q} > {log:q} 2>&1"


def image_embeddings(wildcards):
    # a text-side mitigation reuses the base model's image embeddings instead of re-embedding
    folder = f"{RES}/embeddings/{wildcards.dataset}/{vconfig.image_model(config, wildcards.model)}"
    return {"images": f"{folder}/images.npy", "image_rows": f"{folder}/images.parquet"}


# method approximate also writes its recall against the exact top-k (vlmbias.audit.approximate)
RECALL_OUT = ({"recall": f"{RES}/retrieval/{{dataset}}/{{model}}/{{qset}}_recall.csv"}
              if config["retrieval"]["method"] == "approximate" else {})


rule retrieve:
    input:
        unpack(image_embeddings),
        queries=rules.embed_queries.output.npy,
        query_rows=rules.embed_queries.output.table,
        manifest=rules.dataset_manifest.output.manifest,
    output:
        f"{RES}/retrieval/{{dataset}}/{{model}}/{{qset}}.parquet",
        **RECALL_OUT,
    params:
        k=max(config["retrieval"]["k"]),
        ks=config["retrieval"]["k"],
        method=config["retrieval"]["method"],
        approximate=lambda w: as_json(config["retrieval"].get("approximate") or {}),
        seed=config["seed"],
        recall=lambda w, output: ["--out-recall", output.recall] if "recall" in output.keys() else [],
    threads: 1
    resources:
        **rule_resources("retrieve"),
    log:
        f"{RES}/logs/retrieve/{{dataset}}_{{model}}_{{qset}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.audit.retrieve --images-npy {input.images:q} --images-table {input.image_rows:q}"
        " --queries-npy {input.queries:q} --queries-table {input.query_rows:q} --manifest {input.manifest:q}"
        " --k {params.k:q} --method {params.method:q} --approximate-json {params.approximate:q} --seed {params.seed:q}"
        " --recall-k {params.ks:q} {params.recall:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q}"
        " --query-set {wildcards.qset:q} --out {output[0]:q} > {log:q} 2>&1"


rule metrics:
    input:
        rankings=rules.retrieve.output[0],
        distribution=rules.dataset_manifest.output.distribution,
    output:
        classes=f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_classes.csv",
        summary=f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_summary.csv",
        confusion=f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_confusion.csv",
    params:
        k=config["retrieval"]["k"],
        n_boot=config["metrics"]["n_boot"],
        ci=config["metrics"]["ci_method"],
        attributes=config["metrics"].get("attributes", []),
        skew=config["metrics"]["skew_pseudocount"],
        interval=config["metrics"]["interval"],
        strict=["--strict"] if config["metrics"].get("strict") else [],
        seed=config["seed"],
    threads: 1
    resources:
        **rule_resources("metrics"),
    log:
        f"{RES}/logs/metrics/{{dataset}}_{{model}}_{{qset}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.audit.metrics --rankings {input.rankings:q} --distribution {input.distribution:q}"
        " --k {params.k:q} --n-boot {params.n_boot:q} --ci-method {params.ci:q} --seed {params.seed:q}"
        " --attributes {params.attributes:q} --skew-pseudocount {params.skew:q} --interval {params.interval:q}"
        " {params.strict:q} --out-classes {output.classes:q} --out-summary {output.summary:q} --out-confusion {output.confusion:q}"
        " > {log:q} 2>&1"


# Figures per (dataset, model, query set): distribution bar plots per attribute, a disparity
# heatmap, and a grid of the top retrieved images per query.


rule figures:
    input:
        classes=rules.metrics.output.classes,
        summary=rules.metrics.output.summary,
        confusion=rules.metrics.output.confusion,
        rankings=rules.retrieve.output[0],
        manifest=rules.dataset_manifest.output.manifest,
    output:
        report(
            directory(f"{RES}/figures/{{dataset}}/{{model}}/{{qset}}"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Audit",
            subcategory="{dataset} / {model} / {qset}",
        ),
    params:
        bar_k=config["figures"]["bar_k"],
        grid_k=config["figures"]["grid_k"],
        grid_cols=config["figures"]["grid_cols"],
        max_pixels=MAX_PIXELS,
    threads: 1
    resources:
        **rule_resources("figures"),
    log:
        f"{RES}/logs/figures/{{dataset}}_{{model}}_{{qset}}.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.plots audit --classes {input.classes:q} --summary {input.summary:q}"
        " --confusion {input.confusion:q} --rankings {input.rankings:q} --manifest {input.manifest:q}"
        " --bar-k {params.bar_k:q} --grid-k {params.grid_k:q} --grid-cols {params.grid_cols:q}"
        " --max-pixels {params.max_pixels:q} --out {output:q} > {log:q} 2>&1"


# Zero-shot classification fairness (the audit's second mode): every image classified from class
# prompts; accuracy per group and the share of each group given crime-related / non-human labels.
rule zeroshot:
    input:
        unpack(image_embeddings),
        manifest=rules.dataset_manifest.output.manifest,
        model=model_inputs,
    output:
        accuracy=report(f"{RES}/zeroshot/{{dataset}}/{{model}}/accuracy.csv", caption="../report/zeroshot.rst",
                        category="Zero-shot", subcategory="{dataset} / {model}"),
        harmful=report(f"{RES}/zeroshot/{{dataset}}/{{model}}/harmful.csv", caption="../report/zeroshot.rst",
                       category="Zero-shot", subcategory="{dataset} / {model}"),
        worst_group=f"{RES}/zeroshot/{{dataset}}/{{model}}/worst_group.csv",
        datacomp=f"{RES}/zeroshot/{{dataset}}/{{model}}/datacomp.csv",
    params:
        model=lambda w: as_json(vconfig.model_spec(config, w.model)),
        spec=lambda w: as_json(config.get("zeroshot") or {}),
        device=config["device"],
    threads: config["threads"]
    resources:
        **rule_resources("zeroshot"),
    log:
        f"{RES}/logs/zeroshot/{{dataset}}_{{model}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.audit.zeroshot --model-json {params.model:q} --model-name {wildcards.model:q}"
        " --dataset-name {wildcards.dataset:q} --images-npy {input.images:q} --images-table {input.image_rows:q}"
        " --manifest {input.manifest:q} --spec-json {params.spec:q} --device {params.device:q}"
        " --out-accuracy {output.accuracy:q} --out-harmful {output.harmful:q}"
        " --out-worst-group {output.worst_group:q} --out-datacomp {output.datacomp:q} > {log:q} 2>&1"
