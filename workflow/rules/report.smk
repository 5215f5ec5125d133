# The report: its landing page (summary and headline table) and the run information (the
# configuration as used and the software versions).


rule run_info:
    output:
        config=report(f"{RES}/run_info/config.yaml", caption="../report/run_info.rst", category="Run"),
        versions=report(f"{RES}/run_info/versions.csv", caption="../report/run_info.rst", category="Run"),
    params:
        config=lambda w: as_json(config),
    threads: 1
    resources:
        **rule_resources("run_info"),
    log:
        f"{RES}/logs/run_info.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.report run-info --config-json {params.config:q} --out-config {output.config:q}"
        " --out-versions {output.versions:q} > {log:q} 2>&1"


def summary_inputs(wildcards):
    return {
        "summaries": expand(f"{RES}/metrics/{{dataset}}/{{model}}/{{qset}}_summary.csv", dataset=SELECTED["datasets"],
                            model=SELECTED["models"], qset=SELECTED["query_sets"]),
        "checks": expand(f"{RES}/calibration/{{model}}/checks.csv", model=vconfig.calibration_models(config)),
        "zeroshot": zeroshot_targets(),
        "published": published_targets(),
    }


rule summary:
    input:
        unpack(summary_inputs),
    output:
        rst=f"{RES}/summary/summary.rst",
        csv=report(f"{RES}/summary/headline.csv", caption="../report/summary.rst", category="Summary"),
    params:
        config=lambda w: as_json(config),
        published=" ".join(f"--published {shlex.quote(f)}" for f in published_targets()),
    threads: 1
    resources:
        **rule_resources("run_info"),
    log:
        f"{RES}/logs/summary.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{PY} -m vlmbias.report summary --config-json {params.config:q} --summaries {input.summaries:q}"
        " --checks {input.checks:q} --zeroshot {input.zeroshot:q}"
        " {params.published} --out-rst {output.rst:q}"
        " --out-csv {output.csv:q} > {log:q} 2>&1"
