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
        specs=lambda w: as_json({m: vconfig.model_spec(config, m) for m in vconfig.leaderboard_models(config)}),
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


# Published numbers beside ours: when the config runs a protocol (`protocol: sem2026`), every
# published value of that protocol next to each audited model's own (docs/protocols.md).
def published_inputs(wildcards):
    qsets = [q for q in SELECTED["query_sets"] if q in set(vconfig.protocol_query_sets(config))]
    files = lambda kind: expand(f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_{kind}.csv",
                                dataset=SELECTED["datasets"], model=SELECTED["models"], qset=qsets)
    return {"summaries": files("summary"), "classes": files("classes")}


rule published_comparison:
    input:
        unpack(published_inputs),
    output:
        table=report(f"{RES}/leaderboard/published_comparison.csv", caption="../report/published_comparison.rst",
                     category="Leaderboard"),
    params:
        protocol=config.get("protocol") or "",
        specs=lambda w: as_json({m: vconfig.model_spec(config, m) for m in SELECTED["models"]}),
        types=lambda w: as_json({d: vconfig.dataset_type(config, d) for d in SELECTED["datasets"]}),
        deviations=",".join(vconfig.protocol_deviations(config)),
        extra=f"--published-values {shlex.quote(config['published_values'])}" if config.get("published_values") else "",
    threads: 1
    resources:
        **rule_resources("model_leaderboard"),
    log:
        f"{RES}/logs/published_comparison.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.audit.literature --summaries {input.summaries:q} --classes {input.classes:q}"
        " --protocol {params.protocol:q} --model-specs-json {params.specs:q} --dataset-types-json {params.types:q}"
        " --deviations={params.deviations:q} {params.extra} --out {output.table:q} > {log:q} 2>&1"
