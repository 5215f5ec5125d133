"""The mitigation benchmark's concept split (rule `split`): fitting vs held-out concepts.

Every method that learns or calibrates (the projection's calibration pairs, the LoRA
acquisition/label/fine-tuning set, BendVLM's reference images) sees only the `fitting` concepts;
the comparison reports every method on both halves, and the `held_out` half is the honest number.

Config (`mitigation.split`), one of:
- `{held_out_fraction: 0.4, seed: 0}` (default): within each of `mitigation.query_sets` (a stratum,
  so the gender and the race queries are both split), the concepts are shuffled with `seed` and
  round(fraction x n) of them, at least 1 and at most n - 1, are held out;
- `{held_out: [nurse, CEO, ...]}`: the held-out concepts by name; every other concept is fitting.
  `{held_out: []}` runs without the protocol (every concept fitting, in-sample numbers only; for
  a config with too few concepts to hold any out).
A query set with a single concept keeps it for fitting; a fraction that holds out nothing at all
is an error.

Repeated splits: `folds: N` (with `held_out_fraction`; default 1) draws the split N times, fold f
with seed `seed + f`, so fold 0 is the single split above. Every fitted method is fitted once per
fold and the comparison is averaged over folds (vlmbias.mitigate.folds).

Repeated image splits: `images: true|false` (default true). With folds above 1, every dataset of type
`part` that mitigation uses (the audited `mitigation.dataset` and any BendVLM `reference`) is redrawn
in fold f with its own seed plus f, as the concepts are: fold f fits on and audits other images, its
reference and evaluation parts still disjoint and together the whole parent, and the base model is
audited on each fold's images. Fold 0 keeps the parts' own seed. `images: false` keeps one image
split for every fold (only the concepts vary).

A query's concept is its `concept` field, or its text without a leading article. A concept that
occurs in several query sets belongs to the first one (in `mitigation.query_sets` order).
Output `split.csv`: `query_set, query_id, query, concept, split` (one row per audited query).
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.audit.queries import expand_query_set, strip_article
from vlmbias.io import parse_json_arg, run_cli, write_table

log = logging.getLogger(__name__)
FITTING, HELD_OUT = "fitting", "held_out"
DEFAULT = {"held_out_fraction": 0.4, "seed": 0}


def n_folds(spec: dict | None) -> int:
    """How many times the split is drawn (`folds`, default 1); more than one needs a seeded fraction."""
    spec = DEFAULT if spec is None else spec
    folds = spec.get("folds", 1)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise VlmbiasError(f"mitigation.split.folds must be a whole number of at least 1, got {folds!r}")
    if folds > 1 and "held_out" in spec:
        raise VlmbiasError("mitigation.split.folds repeats a seeded split: give held_out_fraction (+ seed), "
                           "not a fixed held_out list, with folds above 1")
    return folds


def fold_spec(spec: dict | None, fold: int) -> dict:
    """The single split of fold `fold`: the configured seed plus the fold number (fold 0 is the seed itself)."""
    spec = dict(DEFAULT if spec is None else spec)
    if not 0 <= fold < n_folds(spec):
        raise VlmbiasError(f"mitigation.split: fold {fold} does not exist (folds: {n_folds(spec)})")
    spec.pop("folds", None)
    spec.pop("images", None)  # which images a fold reads is the workflow's business (config.fold_dataset)
    seed = spec.get("seed", DEFAULT["seed"])
    if fold and isinstance(seed, int) and not isinstance(seed, bool):  # a bad seed is reported below
        spec["seed"] = seed + fold
    return spec
COLUMNS = ["query_set", "query_id", "query", "concept", "split"]


def query_concepts(query_sets: dict[str, dict]) -> pd.DataFrame:
    """One row per query of the given sets: `query_set, query_id, query, concept`."""
    rows = []
    for name, spec in query_sets.items():
        q = expand_query_set(name, spec)
        for r in q.itertuples():
            concept = r.concept if isinstance(r.concept, str) and r.concept.strip() else strip_article(r.query)
            rows.append({"query_set": name, "query_id": r.query_id, "query": r.query, "concept": concept.strip()})
    return pd.DataFrame(rows, columns=COLUMNS[:-1])


def concept_split(query_sets: dict[str, dict], spec: dict | None = None, fold: int = 0) -> pd.DataFrame:
    """The split table (module docstring) for `query_sets` ({name: query set block}, in order), of fold `fold`."""
    spec = fold_spec(spec, fold)
    unknown = sorted(set(spec) - {"held_out", "held_out_fraction", "seed"})
    if unknown:
        raise VlmbiasError(f"mitigation.split: unknown key(s) {unknown}; give held_out or held_out_fraction (+ seed)")
    if "held_out" in spec and "held_out_fraction" in spec:
        raise VlmbiasError("mitigation.split: give either held_out (a list of concepts) or held_out_fraction, not both")
    table = query_concepts(query_sets)
    if table.empty:
        raise VlmbiasError("mitigation.split: the mitigation query sets have no queries to split")
    owner = {}
    for r in table.itertuples():
        owner.setdefault(r.concept, r.query_set)
    held: set[str] = set()
    if "held_out" in spec:
        names = spec["held_out"]
        if isinstance(names, str) or not isinstance(names, list):
            raise VlmbiasError(f"mitigation.split.held_out must be a list of concepts, got {names!r}")
        missing = [c for c in names if c not in owner]
        if missing:
            raise VlmbiasError(f"mitigation.split.held_out names concept(s) {missing} that no mitigation query "
                               f"set has (known: {sorted(owner)})")
        held = set(names)
    else:
        frac, seed = spec.get("held_out_fraction", DEFAULT["held_out_fraction"]), spec.get("seed", DEFAULT["seed"])
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise VlmbiasError(f"mitigation.split.held_out_fraction must be a number between 0 and 1, got {frac!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise VlmbiasError(f"mitigation.split.seed must be an integer, got {seed!r}")
        rng = np.random.default_rng(seed)
        for qset in dict.fromkeys(owner.values()):
            concepts = sorted(c for c, o in owner.items() if o == qset)
            n = min(max(int(round(frac * len(concepts))), 1), len(concepts) - 1)  # 0 for a single concept
            held |= {concepts[i] for i in rng.permutation(len(concepts))[:n]}
        if not held:
            raise VlmbiasError(f"mitigation.split: no concept can be held out (every query set has one concept: "
                               f"{sorted(owner)}); add concepts, or set split: {{held_out: []}} for in-sample numbers only")
    if held == set(owner):
        raise VlmbiasError("mitigation.split holds out every concept; nothing is left to fit on")
    table["split"] = np.where(table["concept"].isin(held), HELD_OUT, FITTING)
    return table[COLUMNS]


def concepts_of(split: pd.DataFrame, which: str) -> list[str]:
    return sorted(set(split.loc[split["split"] == which, "concept"]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.split", description=__doc__.splitlines()[0])
    p.add_argument("--query-sets-json", required=True,
                   help="[[name, query set block], ...] of mitigation.query_sets, in its order (the order decides "
                        "which set owns a shared concept, and a JSON object's keys may be reordered)")
    p.add_argument("--spec-json", required=True, help="mitigation.split as JSON (null: the default)")
    p.add_argument("--fold", type=int, default=0, help="which fold's split (with mitigation.split.folds above 1)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        pairs = json.loads(a.query_sets_json)
    except json.JSONDecodeError as e:
        raise VlmbiasError(f"--query-sets-json is not valid JSON: {e}") from None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise VlmbiasError("--query-sets-json must be a list of [name, query set block] pairs")
    table = concept_split(dict(pairs),
                          parse_json_arg(a.spec_json, "--spec-json"), a.fold)
    write_table(table, a.out)
    log.info("fitting: %s; held out: %s", concepts_of(table, FITTING), concepts_of(table, HELD_OUT))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
