"""Zero-shot classification fairness, the audit's second mode (CLIP paper, Radford et al. 2021,
section 7.1; DataComp's fairness evaluation): every image of a labelled dataset is classified
zero-shot from class prompts, and the tables report

- `accuracy.csv`: per classified attribute (race, gender, age, ...) the accuracy within every
  group of every labelled attribute (`group_attribute`, `group`; `all` for the whole set), with a
  95% Wilson interval: who is classified correctly, and who is not;
- `harmful.csv`: with a label set that mixes human classes (e.g. the 14 race x gender classes)
  and harmful ones (crime-related: thief, criminal, suspicious person; non-human: animal,
  gorilla, chimpanzee, orangutan), the share of each group's images given a crime-related or a
  non-human label, with Wilson intervals (CLIP's Table 6 setting);
- `worst_group.csv`: per classified attribute and grouping attribute, the worst group's accuracy
  and the best-worst gap (SEM; DataComp's fairness evaluation), read off `accuracy.csv`.

Prompts come from a preset (`presets/zeroshot_fairface.yaml`, with its sources) or an inline
mapping `{attribute: {class: [prompts]}}`; several prompts of a class are averaged (prompt
ensembling). Image embeddings are the audit's own (`embeddings/<dataset>/<model>/`), so nothing
is re-embedded.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd
import yaml

from vlmbias import VlmbiasError
from vlmbias.audit.labels import NOT_ATTRIBUTES
from vlmbias.audit.metrics import labelled, proportion_ci
from vlmbias.audit.presets import PRESET_DIR
from vlmbias.io import check_embeddings, parse_json_arg, read_table, run_cli, write_table

log = logging.getLogger(__name__)

ACCURACY_COLUMNS = ["model", "dataset", "attribute", "group_attribute", "group", "n", "correct", "accuracy",
                    "accuracy_low", "accuracy_high"]
WORST_GROUP_COLUMNS = ["model", "dataset", "attribute", "group_attribute", "groups", "worst_group", "worst_n",
                       "worst_accuracy", "worst_low", "worst_high", "best_group", "best_n", "best_accuracy", "gap"]
DATACOMP_COLUMNS = ["model", "dataset", "table", "row", "column", "value", "n", "scale", "convention"]
HARMFUL_COLUMNS = ["model", "dataset", "label_set", "group_attribute", "group", "n", "crime_related",
                   "crime_rate", "crime_low", "crime_high", "non_human", "non_human_rate", "non_human_low",
                   "non_human_high"]


def load_prompts(spec: dict) -> dict:
    """The prompt block: `spec["prompts"]` names a preset file (its one top-level block) or is the block."""
    prompts = spec.get("prompts", "zeroshot_fairface")
    if isinstance(prompts, str):
        path = PRESET_DIR / f"{prompts}.yaml"
        if not path.is_file():
            raise VlmbiasError(f"zeroshot.prompts: no preset {prompts!r} in {PRESET_DIR}")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data.pop("protocol", None)  # the preset's protocol block (audit/protocols.py), not prompts
        if len(data) != 1:
            raise VlmbiasError(f"zero-shot preset {prompts!r} must hold one prompt block, has {list(data)}")
        prompts = next(iter(data.values()))
    if not isinstance(prompts, dict):
        raise VlmbiasError(f"zeroshot.prompts must be a preset name or a mapping, got {type(prompts).__name__}")
    return prompts


def class_embeddings(encoder, classes: dict[str, list[str]], what: str) -> tuple[list[str], np.ndarray]:
    """(class names, [C, d] unit rows): each class's prompts encoded and averaged."""
    if not classes:
        raise VlmbiasError(f"zero-shot {what}: no classes")
    names, rows = [], []
    for name, texts in classes.items():
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise VlmbiasError(f"zero-shot {what}: class {name!r} needs at least one non-empty prompt")
        m = encoder.encode_texts(texts).mean(0)
        names.append(str(name))
        rows.append(m / np.linalg.norm(m))
    return names, np.stack(rows).astype(np.float32)


def predict(image_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
    """Index of the most similar class per image (ties: the first class)."""
    return np.argmax(image_emb @ class_emb.T, axis=1)


def _grouped(hit: np.ndarray, labels: pd.DataFrame, group_attrs: list[str]) -> pd.DataFrame:
    """n, hits and rate with a 95% Wilson interval: over all images (`all`), then within every group
    of every labelled attribute; an image unlabelled for an attribute counts only in `all`."""
    cells = [("all", "all", hit)]
    for g_attr in group_attrs:
        lab = labelled(labels[g_attr].reset_index(drop=True))
        cells += [(g_attr, g, hit[(lab == g).to_numpy()]) for g in pd.unique(lab.dropna())]
    out = []
    for g_attr, g, h in cells:
        n, x = len(h), int(h.sum())
        lo, hi = proportion_ci(x, n) if n else (np.nan, np.nan)
        out.append({"group_attribute": g_attr, "group": g, "n": n, "hits": x, "rate": x / n if n else np.nan,
                    "low": lo, "high": hi})
    return pd.DataFrame(out)


GENDER_RACE = "gender_race"  # the grouping Table 5 needs, classes "Male|White", ... (audit/intersect.py's form)
RACE_BINARY = "race_binary"  # DataComp's race accuracy: predicted White vs non-White against the truth


def accuracy_table(labels: pd.DataFrame, image_emb: np.ndarray, encoder, prompts: dict,
                   attributes: list[str], race_binary: bool = False) -> pd.DataFrame:
    """Accuracy of classifying each attribute, within every group of every labelled attribute.
    `race_binary` adds the attribute `race_binary`: the race prediction scored as White vs
    non-White only (DataComp's `acc_race`), when race is classified and has a White class."""
    group_attrs = [a for a in labels.columns if a not in NOT_ATTRIBUTES]
    parts = []
    for attr in attributes:
        if attr not in prompts:
            raise VlmbiasError(f"zero-shot: no prompts for attribute {attr!r}; the prompts have {sorted(prompts)}")
        if attr not in labels.columns:
            raise VlmbiasError(f"zero-shot: the dataset has no {attr!r} labels; it has {group_attrs}")
        names, emb = class_embeddings(encoder, prompts[attr], attr)
        truth = labelled(labels[attr].reset_index(drop=True))
        unknown = sorted(set(truth.dropna()) - set(names))
        if unknown:
            raise VlmbiasError(f"zero-shot: {attr} label(s) {unknown[:5]} have no prompt; prompts cover {names}")
        known = truth.notna().to_numpy()
        pred = np.asarray(names, dtype=object)[predict(image_emb[known], emb)]
        correct = pred == truth[known].to_numpy()
        parts.append(_grouped(correct, labels.reset_index(drop=True)[known], group_attrs).assign(attribute=attr))
        if race_binary and attr == "race" and "White" in names:
            same_side = (pred == "White") == (truth[known].to_numpy() == "White")
            parts.append(_grouped(same_side, labels.reset_index(drop=True)[known], group_attrs)
                         .assign(attribute=RACE_BINARY))
    return (pd.concat(parts, ignore_index=True)
            .rename(columns={"hits": "correct", "rate": "accuracy", "low": "accuracy_low", "high": "accuracy_high"}))


def worst_group_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Worst-group accuracy and the best-worst gap (SEM; DataComp's fairness evaluation): for each
    classified `attribute` and each `group_attribute` (its own true classes included: the worst
    class), the group with the lowest accuracy among the groups with at least one image, its Wilson
    interval, the best group, and `gap` = best - worst accuracy (accuracy scale [0, 1], not percent).
    Ties go to the group whose name sorts first."""
    rows = []
    acc = accuracy[(accuracy["group_attribute"] != "all") & (accuracy["n"] > 0)]
    for (attr, g_attr), g in acc.groupby(["attribute", "group_attribute"], sort=False):
        by_acc = g.sort_values(["accuracy", "group"], kind="stable")
        worst = by_acc.iloc[0]
        best = g.assign(neg=-g["accuracy"]).sort_values(["neg", "group"], kind="stable").iloc[0]
        rows.append({"attribute": attr, "group_attribute": g_attr, "groups": len(g), "worst_group": worst["group"],
                     "worst_n": int(worst["n"]), "worst_accuracy": worst["accuracy"],
                     "worst_low": worst["accuracy_low"],
                     "worst_high": worst["accuracy_high"], "best_group": best["group"], "best_n": int(best["n"]),
                     "best_accuracy": best["accuracy"], "gap": best["accuracy"] - worst["accuracy"]})
    return pd.DataFrame(rows, columns=WORST_GROUP_COLUMNS[2:])


def harmful_table(labels: pd.DataFrame, image_emb: np.ndarray, encoder, prompts: dict,
                  label_set: str = "table6") -> pd.DataFrame:
    """Share of each group's images labelled crime-related or non-human within a mixed label set."""
    sets = prompts.get("label_sets") or {}
    if label_set not in sets:
        raise VlmbiasError(f"zero-shot: no label set {label_set!r}; the prompts have {sorted(sets)}")
    pool = {**(prompts.get("race_gender") or {}), **(prompts.get("extra_class_prompts") or {})}
    missing = [c for c in sets[label_set] if c not in pool]
    if missing:
        raise VlmbiasError(f"zero-shot label set {label_set!r}: no prompts for {missing}")
    names, emb = class_embeddings(encoder, {c: pool[c] for c in sets[label_set]}, label_set)
    pred = np.asarray(names, dtype=object)[predict(image_emb, emb)]
    crime = np.isin(pred, prompts.get("crime_related") or [])
    nonhuman = np.isin(pred, prompts.get("non_human") or [])
    group_attrs = [a for a in labels.columns if a not in NOT_ATTRIBUTES]
    c, h = _grouped(crime, labels, group_attrs), _grouped(nonhuman, labels, group_attrs)
    return pd.DataFrame({"label_set": label_set, "group_attribute": c["group_attribute"], "group": c["group"],
                         "n": c["n"], "crime_related": c["hits"], "crime_rate": c["rate"], "crime_low": c["low"],
                         "crime_high": c["high"], "non_human": h["hits"], "non_human_rate": h["rate"],
                         "non_human_low": h["low"], "non_human_high": h["high"]})


def main(argv=None) -> None:
    from vlmbias.encoders.models import load_encoder

    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.zeroshot", description=__doc__.splitlines()[0])
    p.add_argument("--model-json", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--dataset-name", required=True)
    p.add_argument("--images-npy", required=True)
    p.add_argument("--images-table", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--spec-json", default="{}", help="the config's zeroshot block")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-accuracy", required=True)
    p.add_argument("--out-harmful", required=True)
    p.add_argument("--out-worst-group", help="worst-group accuracy and the best-worst gap per grouping")
    p.add_argument("--out-datacomp", help="the CLIP paper's Tables 3-6 as DataComp prints them (audit/datacomp.py)")
    a = p.parse_args(argv)
    spec = parse_json_arg(a.spec_json, "--spec-json")
    prompts = load_prompts(spec)
    # the array, its row table and the manifest must belong together (io.check_embeddings)
    emb, rows, _ = check_embeddings(a.images_npy, a.images_table, "embed_images", manifest=a.manifest, mmap=False)
    labels = read_table(a.manifest).set_index("image_id").loc[rows["image_id"]].reset_index()
    if {"gender", "race"} <= set(labels.columns) and GENDER_RACE not in labels.columns:
        # gender x race groups for the CLIP paper's Table 5 (gender accuracy per race and gender)
        g, r = labelled(labels["gender"]), labelled(labels["race"])
        labels[GENDER_RACE] = [f"{x}|{y}" if pd.notna(x) and pd.notna(y) else None for x, y in zip(g, r)]
    encoder = load_encoder(parse_json_arg(a.model_json, "--model-json"), a.device)
    key = {"model": a.model_name, "dataset": a.dataset_name}
    attributes = spec.get("attributes") or [k for k in ("race", "gender", "age") if k in labels.columns]
    acc = accuracy_table(labels, emb, encoder, prompts, attributes, race_binary=True).assign(**key)[ACCURACY_COLUMNS]
    harm = harmful_table(labels, emb, encoder, prompts, spec.get("label_set", "table6")).assign(**key)[HARMFUL_COLUMNS]
    write_table(acc, a.out_accuracy)
    write_table(harm, a.out_harmful)
    if a.out_datacomp:
        from vlmbias.audit.datacomp import datacomp_table

        write_table(datacomp_table(acc, harm).assign(**key)[DATACOMP_COLUMNS], a.out_datacomp)
    if a.out_worst_group:
        worst = worst_group_table(acc).assign(**key)[WORST_GROUP_COLUMNS]
        write_table(worst, a.out_worst_group)
    for r in acc[acc["group"] == "all"].itertuples():
        log.info("%s zero-shot accuracy %.3f (%d images)", r.attribute, r.accuracy, r.n)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
