# The model leaderboard: headline metrics of every audited model (e.g. every open_clip tag an
# `expand` entry lists) in one table and figure. Built when two or more models are audited.


def leaderboard_inputs(wildcards):
    return expand(f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_summary.csv", dataset=SELECTED["datasets"],
                  model=vconfig.leaderboard_models(config), qset=SELECTED["query_sets"])


rule model_leaderboard:
    input:
        leaderboard_inputs,
    output:
        table=report(f"{RES}/leaderboard/models.csv", caption="../report/model_leaderboard.rst",
                     category="Leaderboard"),
        figure=report(f"{RES}/leaderboard/models.png", caption="../report/model_leaderboard.rst",
                      category="Leaderboard"),
    params:
        k=vconfig.leaderboard_k(config),
        specs=as_json({m: vconfig.model_spec(config, m) for m in vconfig.leaderboard_models(config)}),
    threads: 1
    resources:
        **rule_resources("model_leaderboard"),
    log:
        f"{RES}/logs/model_leaderboard.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.audit.leaderboard --summaries {input:q} --k {params.k:q} --model-specs-json {params.specs:q}"
        " --out-table {output.table:q} --out-figure {output.figure:q} > {log:q} 2>&1"
