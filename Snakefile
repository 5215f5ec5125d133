# vlmbias: audit social bias in CLIP-style models. `snakemake --cores 8` rebuilds everything.
# Rules live in workflow/rules/*.smk; each calls one module of src/vlmbias.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/mitigate.smk"
include: "workflow/rules/experiments.smk"
include: "workflow/rules/leaderboard.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        audit_targets(),
    default_target: True
