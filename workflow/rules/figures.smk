# Figures per (dataset, model, query set): distribution bar plots per attribute, a disparity
# heatmap, and a grid of the top retrieved images per query.


rule figures:
    input:
        classes=rules.metrics.output.classes,
        summary=rules.metrics.output.summary,
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
    log:
        f"{RES}/logs/figures/{{dataset}}_{{model}}_{{qset}}.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.plots audit --classes {input.classes} --summary {input.summary}"
        " --rankings {input.rankings} --manifest {input.manifest} --bar-k {params.bar_k}"
        " --grid-k {params.grid_k} --grid-cols {params.grid_cols} --out {output} > {log} 2>&1"
