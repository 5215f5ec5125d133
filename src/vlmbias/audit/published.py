"""Readers for published face datasets in their released layouts -> the one manifest schema.

Each reader returns (manifest, skipped, classes) like the readers in `vlmbias.audit.data`:
the manifest has `image_id`, `path`, one column per attribute (null = unlabelled) and, for
FACET, a `crop` column; `skipped` lists entries left out with the reason (files not found,
documented skips such as UTKFace's malformed file names). Class names and orders are the
source's (docs/datasets.md).

- `utkface`: labels in the file name `age_gender_race_date.jpg[.chip.jpg]`.
- `celeba`: `img_align_celeba/`, `list_attr_celeba.txt` (+1/-1 per attribute), `list_eval_partition.txt`.
- `facet`: `annotations.csv`, one row per annotated person with a bounding box; one item per person.
"""
from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.audit.labels import FAIRFACE_CLASSES, read_label_csv

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["image_id", "path", "reason"]
NOT_FOUND = "file not found"  # the one reason that counts against a dataset's max_missing_fraction
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# UTKFace (Zhang, Song & Qi, CVPR 2017): gender 0 male, 1 female; race 0..4 in this order
UTKFACE_GENDER = ["Male", "Female"]
UTKFACE_RACE = ["White", "Black", "Asian", "Indian", "Others"]
UTKFACE_CLASSES = {"gender": UTKFACE_GENDER, "race": UTKFACE_RACE, "age": FAIRFACE_CLASSES["age"]}
# FairFace's age bins as (lowest age, class): UTKFace's ages in years are binned the same way
_AGE_BINS = [(0, "0-2"), (3, "3-9"), (10, "10-19"), (20, "20-29"), (30, "30-39"), (40, "40-49"),
             (50, "50-59"), (60, "60-69"), (70, "more than 70")]

CELEBA_SPLITS = {"train": "0", "val": "1", "test": "2"}
CELEBA_VALUES = ["1", "-1"]  # the source's own codes: present, absent

# FACET (Gustafson et al., ICCV 2023): one-hot annotation columns per attribute; `na` = unlabelled
FACET_GENDER = ["masc", "fem", "non_binary"]
FACET_AGE = ["young", "middle", "older"]
FACET_SKIN = [str(i) for i in range(1, 11)]  # Monk Skin Tone 1..10, annotator votes per tone
FACET_VISIBLE = ["face", "torso"]  # `visible_minimal` marks a person barely visible: see exclude_minimal


def _skipped(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=SKIPPED_COLUMNS)


def age_bin(years: int) -> str:
    """FairFace's age class for an age in years."""
    label = _AGE_BINS[0][1]
    for low, name in _AGE_BINS:
        if years >= low:
            label = name
    return label


def parse_utkface_name(name: str) -> tuple[int, str, str] | None:
    """(age, gender, race) from `age_gender_race_date...`; None for a malformed name."""
    parts = name.split(".")[0].split("_")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        return None
    age, g, r = int(parts[0]), int(parts[1]), int(parts[2])
    if g >= len(UTKFACE_GENDER) or r >= len(UTKFACE_RACE) or age > 130:
        return None
    return age, UTKFACE_GENDER[g], UTKFACE_RACE[r]


def utkface_manifest(root: str | Path):
    """Every image under `root` (the aligned `UTKFace/` folder or the in-the-wild `part1..3/`)."""
    root = Path(root)
    if not root.is_dir():
        raise VlmbiasError(f"UTKFace root not found: {root} (expected images named age_gender_race_date.jpg)")
    rows, skipped = [], []
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = f.relative_to(root).as_posix()
        parsed = parse_utkface_name(f.name)
        if parsed is None:
            skipped.append({"image_id": rel, "path": str(f.resolve()),
                            "reason": "malformed UTKFace file name (expected age_gender_race_date)"})
            continue
        age, gender, race = parsed
        rows.append({"image_id": rel, "path": str(f.resolve()), "gender": gender, "race": race, "age": age_bin(age)})
    for s in skipped:
        log.warning("skipped %s: %s", s["image_id"], s["reason"])
    manifest = pd.DataFrame(rows, columns=["image_id", "path", *UTKFACE_CLASSES])
    return manifest, _skipped(skipped), UTKFACE_CLASSES


def _read_celeba_list(path: Path, n_values: int | None, allowed: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(header names, {file: values}) of a whitespace-separated CelebA list; a bad line is an error
    naming the file and line."""
    if not path.is_file():
        raise VlmbiasError(f"CelebA list not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    header, start = [], 0
    if n_values is None:  # list_attr_celeba.txt: a count line, then the attribute names
        if len(lines) < 2:
            raise VlmbiasError(f"{path}: expected a count line and an attribute-name line")
        header, start, n_values = lines[1].split(), 2, len(lines[1].split())
    out = {}
    for no, line in enumerate(lines[start:], start + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != n_values + 1 or not set(fields[1:]) <= allowed:
            raise VlmbiasError(f"{path} line {no}: expected a file name and {n_values} value(s) in {sorted(allowed)}, "
                               f"got {line.strip()[:80]!r}")
        out[fields[0]] = fields[1:]
    return header, out


def celeba_manifest(root: str | Path, split: str = "test", attributes: list[str] | None = None):
    """CelebA in its released layout. `split`: train, val, test (list_eval_partition 0/1/2) or all.
    `gender` comes from `Male` (Male/Female); `attributes` adds other CelebA attributes with the
    source's codes as classes ("1" present, "-1" absent)."""
    root = Path(root)
    if not root.is_dir():
        raise VlmbiasError(f"CelebA root not found: {root} (expected img_align_celeba/ and list_attr_celeba.txt)")
    if split != "all" and split not in CELEBA_SPLITS:
        raise VlmbiasError(f"CelebA split {split!r}: expected one of {[*CELEBA_SPLITS, 'all']}")
    names, attrs = _read_celeba_list(root / "list_attr_celeba.txt", None, set(CELEBA_VALUES))
    _, parts = _read_celeba_list(root / "list_eval_partition.txt", 1, set(CELEBA_SPLITS.values()))
    extra = list(attributes or [])
    unknown = [a for a in ["Male", *extra] if a not in names]
    if unknown:
        raise VlmbiasError(f"{root / 'list_attr_celeba.txt'} has no attribute(s) {unknown}; it has {names}")
    col = {a: names.index(a) for a in ["Male", *extra]}
    rows, skipped = [], []
    for fname, values in attrs.items():
        path = root / "img_align_celeba" / fname
        if fname not in parts:  # no split to place it in: a documented skip, not a guess
            skipped.append({"image_id": fname, "path": str(path.resolve()), "reason": "not in list_eval_partition.txt"})
            continue
        if split != "all" and parts[fname][0] != CELEBA_SPLITS[split]:
            continue
        if not path.is_file():
            skipped.append({"image_id": fname, "path": str(path.resolve()), "reason": NOT_FOUND})
            continue
        row = {"image_id": fname, "path": str(path.resolve()),
               "gender": "Male" if values[col["Male"]] == "1" else "Female"}
        row.update({a: values[col[a]] for a in extra})
        rows.append(row)
    for s in skipped:
        log.warning("skipped %s: %s", s["image_id"], s["reason"])
    classes = {"gender": ["Male", "Female"], **{a: CELEBA_VALUES for a in extra}}
    return pd.DataFrame(rows, columns=["image_id", "path", *classes]), _skipped(skipped), classes


def _box(row: pd.Series, csv_path: Path, line: int) -> str:
    """The person's box as `x,y,width,height` (pixels): the `bounding_box` JSON (or Python dict)
    text, or separate x/y/width/height columns."""
    try:
        if "bounding_box" in row.index:
            text = row["bounding_box"]
            try:
                b = json.loads(text)
            except json.JSONDecodeError:
                b = ast.literal_eval(text)
            x, y, w, h = (float(b[k]) for k in ("x", "y", "width", "height"))
        else:
            x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
    except (ValueError, SyntaxError, KeyError, TypeError):
        raise VlmbiasError(f"{csv_path} line {line}: bounding box is not {{x, y, width, height}}") from None
    if w <= 0 or h <= 0:
        raise VlmbiasError(f"{csv_path} line {line}: bounding box has a non-positive width or height")
    return f"{x:g},{y:g},{w:g},{h:g}"


def _flags(row: pd.Series, prefix: str, names: list[str], csv_path: Path, line: int) -> list[int]:
    try:
        return [int(float(row[f"{prefix}{n}"] or 0)) for n in names]
    except ValueError:
        raise VlmbiasError(f"{csv_path} line {line}: a {prefix}* value is not a number") from None


def _one_hot(flags: list[int], classes: list[str]):
    """The class whose flag alone is set; None (unlabelled) for none, several, or only `na`."""
    on = [c for c, f in zip(classes, flags) if f > 0]
    return on[0] if len(on) == 1 else None


def _majority(votes: list[int], classes: list[str]):
    top = max(votes)
    winners = [c for c, v in zip(classes, votes) if v == top]
    return winners[0] if top > 0 and len(winners) == 1 else None


def facet_manifest(root: str | Path, csv: str | None = None, require_visible: list[str] | None = None,
                   exclude_minimal: bool = False):
    """FACET: one item per annotated person (`image_id` = `<filename>#<person_id>`), its box in the
    `crop` column. Images are found by file name anywhere under `root` (the release's imgs_1..3/).
    Attributes: gender (perceived gender presentation), age (perceived age group), skin_tone (the
    Monk Skin Tone most annotators chose; ties unlabelled), person_class (FACET's `class1`).
    `require_visible`: keep only persons whose visibility flags (face, torso) are all set;
    `exclude_minimal`: leave out persons flagged `visible_minimal` (only minimally visible)."""
    root = Path(root)
    if not root.is_dir():
        raise VlmbiasError(f"FACET root not found: {root} (expected annotations.csv and the image folders)")
    csv_path = Path(csv) if csv and Path(csv).is_absolute() else root / (csv or "annotations.csv")
    if not csv and not csv_path.is_file() and (root / "annotations" / "annotations.csv").is_file():
        csv_path = root / "annotations" / "annotations.csv"
    visible = list(require_visible or [])
    bad = [v for v in visible if v not in FACET_VISIBLE]
    if bad:
        raise VlmbiasError(f"FACET require_visible {bad}: expected some of {FACET_VISIBLE}")
    need = ["person_id", "filename", "class1", *(f"gender_presentation_{c}" for c in FACET_GENDER),
            *(f"age_presentation_{c}" for c in FACET_AGE), *(f"skin_tone_{c}" for c in FACET_SKIN),
            *(f"visible_{v}" for v in visible), *(["visible_minimal"] if exclude_minimal else [])]
    df = read_label_csv(csv_path, need)
    if "bounding_box" not in df.columns and not {"x", "y", "width", "height"} <= set(df.columns):
        raise VlmbiasError(f"{csv_path} lacks a bounding_box column (or x, y, width, height)")
    files = {p.name: p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    rows, skipped, n_hidden = [], [], 0
    for i, row in df.iterrows():
        line = i + 2  # header is line 1
        image_id = f"{row['filename']}#{row['person_id']}"
        if visible and not all(v > 0 for v in _flags(row, "visible_", visible, csv_path, line)):
            n_hidden += 1
            continue
        if exclude_minimal and _flags(row, "visible_", ["minimal"], csv_path, line)[0] > 0:
            n_hidden += 1
            continue
        crop = _box(row, csv_path, line)
        path = files.get(row["filename"])
        if path is None:
            skipped.append({"image_id": image_id, "path": str((root / row["filename"]).resolve()), "reason": NOT_FOUND})
            continue
        rows.append({"image_id": image_id, "path": str(path.resolve()), "crop": crop,
                     "gender": _one_hot(_flags(row, "gender_presentation_", FACET_GENDER, csv_path, line),
                                        FACET_GENDER),
                     "age": _one_hot(_flags(row, "age_presentation_", FACET_AGE, csv_path, line), FACET_AGE),
                     "skin_tone": _majority(_flags(row, "skin_tone_", FACET_SKIN, csv_path, line), FACET_SKIN),
                     "person_class": row["class1"] or None})
    if n_hidden:
        log.info("FACET: %d of %d persons left out by require_visible %s / exclude_minimal %s", n_hidden, len(df),
                 visible, exclude_minimal)
    manifest = pd.DataFrame(rows, columns=["image_id", "path", "crop", "gender", "age", "skin_tone", "person_class"])
    classes = {"gender": FACET_GENDER, "age": FACET_AGE, "skin_tone": FACET_SKIN,
               "person_class": sorted(set(manifest["person_class"].dropna()))}
    return manifest, _skipped(skipped), classes

