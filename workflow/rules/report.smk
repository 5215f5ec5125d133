# Run information for the report: the configuration as used and the software versions.


rule run_info:
    output:
        config=report(f"{RES}/run_info/config.yaml", caption="../report/run_info.rst", category="Run"),
        versions=report(f"{RES}/run_info/versions.csv", caption="../report/run_info.rst", category="Run"),
    params:
        config=as_json(config),
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
