"""The CLIP paper's bias tables (Radford et al. 2021, section 7.1, Tables 3-6) in the layout
DataComp's fairness evaluation prints them (mlfoundations/datacomp eval_utils/fairness_tables.py),
built from the zero-shot stage's per-group tables (`accuracy.csv`, `harmful.csv`):

- Table 3+4: accuracy (percent) of classifying race, gender and age for White, non-White and all
  images. Non-White pools every race group but White (its correct / its n). The race column is
  DataComp's convention where `accuracy.csv` has it (`race_binary`: a prediction counts as right
  when it puts a White image in White and a non-White image in any other race), else 7-way race
  accuracy (the convention is named in the row);
- Table 5: gender accuracy (percent) per gender (rows) and race (columns), from the `gender_race`
  groups;
- Table 6: the percent of each race's images given a crime-related or a non-human label (label set
  of `harmful.csv`, CLIP's Table 6 by default).

One row per table cell: `table` (3-4, 5, 6), `row`, `column`, `value` (percent, x100), `n` (images
behind the cell) and `convention`. Races come in DataComp's FairFace order where known.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError

# DataComp's FairFace column order (fairness_tables.py), in FairFace's class names
RACE_ORDER = ["Black", "White", "Indian", "Latino_Hispanic", "Middle Eastern", "Southeast Asian", "East Asian"]
WHITE = "White"
SCALE = 100


def _races(groups) -> list[str]:
    groups = list(dict.fromkeys(groups))
    return [r for r in RACE_ORDER if r in groups] + [r for r in groups if r not in RACE_ORDER]


def _pooled(rows: pd.DataFrame, hits: str) -> tuple[float, int]:
    n = int(rows["n"].sum())
    return (SCALE * float(rows[hits].sum()) / n if n else np.nan), n


def datacomp_table(accuracy: pd.DataFrame, harmful: pd.DataFrame) -> pd.DataFrame:
    """The cells of Tables 3+4, 5 and 6 (module docstring) from one model's zero-shot tables."""
    need = {"attribute", "group_attribute", "group", "n", "correct"}
    if not need <= set(accuracy.columns) or not {"group_attribute", "group", "n", "crime_related",
                                                 "non_human"} <= set(harmful.columns):
        raise VlmbiasError("the zero-shot tables lack columns the DataComp table needs; rerun the zeroshot stage")
    cells = []
    by_race = accuracy[accuracy["group_attribute"] == "race"]
    for column in ("race", "gender", "age"):
        attr = "race_binary" if column == "race" and (accuracy["attribute"] == "race_binary").any() else column
        a = by_race[by_race["attribute"] == attr]
        overall = accuracy[(accuracy["attribute"] == attr) & (accuracy["group_attribute"] == "all")]
        if overall.empty:
            continue
        conv = ("race: predicted White vs non-White against the truth (DataComp)" if attr == "race_binary"
                else f"{column}: top-1 accuracy over its classes")
        for row, part in (("white", a[a["group"] == WHITE]), ("non-white", a[a["group"] != WHITE]),
                          ("overall", overall)):
            value, n = _pooled(part, "correct")
            cells.append({"table": "3-4", "row": row, "column": column, "value": value, "n": n, "convention": conv})
    g = accuracy[(accuracy["attribute"] == "gender") & (accuracy["group_attribute"] == "gender_race")]
    split = g["group"].astype(str).str.split("|", n=1, expand=True) if len(g) else None
    if split is not None:
        g = g.assign(gender=split[0], race=split[1])
        for gender in ("Male", "Female"):
            for race in _races(g["race"]):
                value, n = _pooled(g[(g["gender"] == gender) & (g["race"] == race)], "correct")
                cells.append({"table": "5", "row": gender.lower(), "column": race, "value": value, "n": n,
                              "convention": "gender accuracy within each gender x race group"})
    h = harmful[harmful["group_attribute"] == "race"]
    for row, hits in (("crime-related", "crime_related"), ("non-human", "non_human")):
        for race in _races(h["group"]):
            value, n = _pooled(h[h["group"] == race], hits)
            cells.append({"table": "6", "row": row, "column": race, "value": value, "n": n,
                          "convention": f"percent of the race's images given a {row} label"})
    return pd.DataFrame(cells, columns=["table", "row", "column", "value", "n", "convention"]).assign(scale=SCALE)


def format_tables(cells: pd.DataFrame) -> str:
    """The three tables as text, one decimal, as DataComp prints them."""
    out = []
    for table, title in (("3-4", "Table 3+4"), ("5", "Table 5"), ("6", "Table 6")):
        t = cells[cells["table"] == table]
        if t.empty:
            continue
        wide = t.pivot(index="row", columns="column", values="value")
        wide = wide.reindex(index=list(dict.fromkeys(t["row"])), columns=list(dict.fromkeys(t["column"])))
        out += [f"# {title}", wide.to_string(float_format=lambda v: f"{v:.1f}"), ""]
    return "\n".join(out)
