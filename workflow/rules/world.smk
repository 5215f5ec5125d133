# The calibration world: a synthetic, seeded world with a planted bias, and a small CLIP trained on it.


rule world_generate:
    output:
        directory(vconfig.world_data_dir(config)),
    params:
        spec=lambda w: as_json(config.get("world", {})),
    threads: 1
    resources:
        **rule_resources("world_generate"),
    log:
        f"{RES}/logs/world_generate.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.world.generate generate --spec-json {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule world_train:
    input:
        vconfig.world_data_dir(config),
    output:
        directory(f"{RES}/world/models/{{wmodel}}"),  # wmodel: one of vconfig.WORLD_MODELS
    params:
        spec=lambda w: as_json(config.get("world", {})),
        max_pixels=MAX_PIXELS,
    threads: vconfig.world_train_threads(config)
    resources:
        **rule_resources("world_train"),
    log:
        f"{RES}/logs/world_train/{{wmodel}}.log",
    benchmark:
        f"{RES}/benchmarks/world_train/{{wmodel}}.tsv"
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.world.model train --world {input:q} --spec-json {params.spec:q}"
        " --out {output:q} --threads {threads:q} --max-pixels {params.max_pixels:q} > {log:q} 2>&1"


def calibration_inputs(wildcards):
    cal, ds = config["calibration"], config["calibration"]["dataset"]
    return {
        "world": vconfig.world_data_dir(config),
        "classes": [f"{RES}/metrics/{ds}/{wildcards.model}/{q}_classes.csv" for q in cal["query_sets"]],
        "queries": [f"{RES}/queries/{wildcards.model}/{q}.npy" for q in cal["query_sets"]],
        "images": f"{RES}/embeddings/{ds}/{wildcards.model}/images.npy",
        "image_rows": f"{RES}/embeddings/{ds}/{wildcards.model}/images.parquet",
        "manifest": f"{RES}/data/{ds}/manifest.parquet",
        # the zero-shot audit's harmful-label table: the crime / non-human known answers
        "harmful": f"{RES}/zeroshot/{ds}/{wildcards.model}/harmful.csv",
    }


rule calibrate:
    input:
        unpack(calibration_inputs),
    output:
        table=f"{RES}/calibration/{{model}}/calibration.csv",
        checks=report(f"{RES}/calibration/{{model}}/checks.csv", caption="../report/calibration.rst",
                      category="Calibration", subcategory="{model}"),
        tracking=f"{RES}/calibration/{{model}}/metric_tracking.csv",
        plot=report(f"{RES}/calibration/{{model}}/calibration.png", caption="../report/calibration.rst",
                    category="Calibration", subcategory="{model}"),
    params:
        k=config.get("calibration", {}).get("k"),
        strong=config.get("calibration", {}).get("strong", {}),
    threads: 1
    resources:
        **rule_resources("calibrate"),
    log:
        f"{RES}/logs/calibrate/{{model}}.log",
    conda:
        "../../envs/audit.yaml"
    shell:
        "{PY} -m vlmbias.world.calibrate --world {input.world:q} --classes {input.classes:q} --queries {input.queries:q}"
        " --images-npy {input.images:q} --images-table {input.image_rows:q} --manifest {input.manifest:q}"
        " --k {params.k:q} --zeroshot-harmful {input.harmful:q} --strong-gender {params.strong[gender]:q} --strong-race {params.strong[race]:q}"
        " --out-table {output.table:q} --out-checks {output.checks:q} --out-tracking {output.tracking:q}"
        " --out-plot {output.plot:q} > {log:q} 2>&1"
