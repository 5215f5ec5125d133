# vlmbias: audit social bias in CLIP-style models. `snakemake --cores 8` rebuilds everything.
# Rules live in workflow/rules/*.smk; each calls one module of src/vlmbias.
from snakemake.utils import min_version

min_version("9.0")


# The default run's config, unless config files are named on the command line: each of those (e.g.
# config/thesis.yaml) is a whole experiment, so the default run's world must not be merged into it.
# An overlay is named after the config it extends: --configfile config.yaml config/world_non_human.yaml
if not workflow.overwrite_configfiles:

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
