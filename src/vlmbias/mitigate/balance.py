"""A LoRA method's own balanced fine-tuning set (rule `balance`), drawn from the label stage's
labels with the method's `balanced` block, e.g. `{attributes: [gender, race], allow_missing: true}`
for a set balanced over gender x race within every concept (label.balanced_set). The labels
come from the acquired images of the mitigation split's fitting concepts only.
"""
from __future__ import annotations

import argparse
import logging

from vlmbias.io import parse_json_arg, read_table, run_cli, write_table
from vlmbias.mitigate.label import balance_from_spec

log = logging.getLogger(__name__)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.balance", description=__doc__.splitlines()[0])
    p.add_argument("--labels", required=True, help="labels.parquet of the label stage")
    p.add_argument("--spec-json", required=True, help="the method's balanced block as JSON")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    out = balance_from_spec(read_table(a.labels), parse_json_arg(a.spec_json, "--spec-json"))
    write_table(out, a.out)
    log.info("balanced set: %d images, cells %s", len(out), out.groupby("cell").size().to_dict())


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
