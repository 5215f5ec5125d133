"""Readers for published face datasets in their released layouts -> the one manifest schema.

Each reader returns (manifest, skipped, classes) like the readers in `vlmbias.audit.data`:
the manifest has `image_id`, `path`, one column per attribute (null = unlabelled) and, for
FACET, a `crop` column; `skipped` lists entries left out with the reason (files not found,
documented skips such as UTKFace's malformed file names). Class names and orders are the
source's (docs/datasets.md).

- `utkface`: labels in the file name `age_gender_race_date.jpg[.chip.jpg]`.
- `celeba`: `img_align_celeba/`, `list_attr_celeba.txt` (+1/-1 per attribute), `list_eval_partition.txt`.
- `facet`: `annotations.csv`, one row per annotated person with a bounding box; one item per person.
- `socialcounterfactuals`: the hub parquet files, one row per generated image of a counterfactual set.
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



# SocialCounterfactuals (Howard et al., CVPR 2024; hub dataset Intel/SocialCounterfactuals): parquet
# rows of one generated image each, `counterfactual_set` (the set id), the two attribute types varied
# in the set (`a1_type`, `a2_type`: race, gender or physical) and their values (`a1`, `a2`), the
# `caption` the image was generated from, and `image` ({bytes, path} as `datasets` stores images).
# Class names and orders as in the released generation captions.
SOCIALCF_HUB_REPO = "Intel/SocialCounterfactuals"
SOCIALCF_CLASSES = {
    "race": ["White", "Black", "Indian", "Asian", "Middle Eastern", "Latino"],
    "gender": ["male", "female"],
    "physical": ["skinny", "young", "obese", "tattooed", "old"],
}
SOCIALCF_SET_TYPES = ["race-gender", "physical-gender", "physical-race"]
SOCIALCF_COLUMNS = ["counterfactual_set", "a1_type", "a1", "a2_type", "a2", "caption", "image"]
NO_IMAGE_BYTES = "no image bytes in the parquet row"


def _attribute_type(value, shard: Path, row: int) -> str:
    kind = str(value or "").strip().lower()
    if kind.startswith("physical"):  # "physical" or "physical characteristics"
        kind = "physical"
    if kind not in SOCIALCF_CLASSES:
        raise VlmbiasError(f"{shard} row {row}: attribute type {value!r} is not one of {list(SOCIALCF_CLASSES)}")
    return kind


def _image_suffix(data: bytes) -> str | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    return None


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def socialcounterfactuals_manifest(root: str | Path, image_dir: str | Path | None = None,
                                   set_types: list[str] | None = None, classes: dict | None = None):
    """SocialCounterfactuals from a local copy of its hub parquet files (every `*.parquet` under
    `root`, e.g. a clone's `data/train-*.parquet`). One item per image: `image_id` =
    `<counterfactual_set>/<a1>_<a2>`, the two attributes its set varies (the third is null), and the
    non-attribute columns `counterfactual_set`, `set_type` (`race-gender`, `physical-gender`,
    `physical-race`) and `caption`. Images are unpacked once to `image_dir` (default `<root>/images`).
    `set_types` keeps only those set types; `classes` ({attribute: [classes]}) replaces a class list,
    for a release with values beyond the ones documented. An unknown attribute type or value, or an
    image repeated within a set, is an error naming the file and row; a row without image bytes is a
    listed skip."""
    import pyarrow.parquet as pq

    root = Path(root)
    if not root.is_dir():
        raise VlmbiasError(f"SocialCounterfactuals root not found: {root} (expected the hub copy's parquet files)")
    shards = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not shards:
        raise VlmbiasError(f"SocialCounterfactuals: no .parquet files under {root}")
    order = {a: [str(c) for c in (classes or {}).get(a, default)] for a, default in SOCIALCF_CLASSES.items()}
    unknown = sorted(set(classes or {}) - set(SOCIALCF_CLASSES))
    if unknown:
        raise VlmbiasError(f"SocialCounterfactuals classes for {unknown}: its attributes are {list(SOCIALCF_CLASSES)}")
    by_key = {a: {c.casefold(): c for c in cls} for a, cls in order.items()}
    keep = list(set_types or SOCIALCF_SET_TYPES)
    bad = [t for t in keep if t not in SOCIALCF_SET_TYPES]
    if bad:
        raise VlmbiasError(f"SocialCounterfactuals set_types {bad}: expected some of {SOCIALCF_SET_TYPES}")
    image_dir = Path(image_dir) if image_dir else root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped, seen = [], [], {}
    for shard in shards:
        pf = pq.ParquetFile(shard)
        lacking = [c for c in SOCIALCF_COLUMNS if c not in pf.schema_arrow.names]
        if lacking:
            raise VlmbiasError(f"{shard} lacks column(s) {lacking}; it has {pf.schema_arrow.names}")
        row_no = 0
        for batch in pf.iter_batches(batch_size=256, columns=SOCIALCF_COLUMNS):  # images: a batch at a time
            for rec in batch.to_pylist():
                row_no += 1
                kinds = [_attribute_type(rec["a1_type"], shard, row_no), _attribute_type(rec["a2_type"], shard, row_no)]
                set_type = "-".join(kinds)
                if set_type not in SOCIALCF_SET_TYPES:
                    raise VlmbiasError(f"{shard} row {row_no}: set type {set_type!r} is not one of {SOCIALCF_SET_TYPES}")
                if set_type not in keep:
                    continue
                labels = {}
                for kind, value in zip(kinds, (rec["a1"], rec["a2"])):
                    name = by_key[kind].get(str(value or "").strip().casefold())
                    if name is None:
                        raise VlmbiasError(f"{shard} row {row_no}: {kind} value {value!r} is not one of {order[kind]} "
                                           f"(declare the release's classes under the dataset's 'classes')")
                    labels[kind] = name
                cf_set = str(rec["counterfactual_set"] or "").strip()
                if not cf_set:
                    raise VlmbiasError(f"{shard} row {row_no}: empty counterfactual_set")
                image_id = f"{cf_set}/{labels[kinds[0]]}_{labels[kinds[1]]}"
                if image_id in seen:
                    raise VlmbiasError(f"{shard} row {row_no}: set {cf_set!r} already has an image for "
                                       f"{labels[kinds[0]]}, {labels[kinds[1]]} ({seen[image_id]})")
                seen[image_id] = f"{shard.name} row {row_no}"
                data = (rec["image"] or {}).get("bytes")
                suffix = _image_suffix(data) if data else None
                if suffix is None:
                    reason = NO_IMAGE_BYTES if not data else "image bytes are neither PNG nor JPEG"
                    log.warning("%s row %d (%s): %s", shard, row_no, image_id, reason)
                    skipped.append({"image_id": image_id, "path": str(shard), "reason": reason})
                    continue
                out = image_dir / (_safe_name(image_id.replace("/", "__")) + suffix)
                if not out.exists() or out.stat().st_size != len(data):
                    tmp = out.with_name(out.name + ".part")  # never a half-written image under the final name
                    tmp.write_bytes(data)
                    tmp.replace(out)
                rows.append({"image_id": image_id, "path": str(out.resolve()), **labels, "counterfactual_set": cf_set,
                             "set_type": set_type, "caption": rec["caption"]})
    columns = ["image_id", "path", *SOCIALCF_CLASSES, "counterfactual_set", "set_type", "caption"]
    manifest = pd.DataFrame(rows, columns=columns)
    used = {a: order[a] for a in SOCIALCF_CLASSES if any(a in t.split("-") for t in keep)}
    return manifest[["image_id", "path", *used, "counterfactual_set", "set_type", "caption"]], _skipped(skipped), used


def socialcounterfactuals_hub_manifest(repo: str = SOCIALCF_HUB_REPO, files: str = "data/train-*.parquet",
                                       cache_dir: str | Path | None = None, **kwargs):
    """Fetch the hub copy's parquet files (network needed once; later runs reuse the cache), then read
    them as `socialcounterfactuals_manifest` does, images unpacked beside them."""
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(repo, repo_type="dataset", allow_patterns=[files], cache_dir=cache_dir)
    except Exception as e:  # the hub client raises many types offline; the cause is the same
        raise VlmbiasError(
            f"cannot fetch {repo} ({files}): it needs network access or a populated Hugging Face cache; offline, "
            f"download the parquet files yourself and use type 'socialcounterfactuals' with a local root "
            f"({type(e).__name__})") from None
    kwargs.setdefault("image_dir", Path(local) / "images")
    return socialcounterfactuals_manifest(local, **kwargs)


# UTKFace as DataComp's fairness evaluation reads it (hub dataset djghosh/wds_utkface_test): a
# webdataset, `<split>/*.tar` holding per sample `<key>.<webp|png|jpg>` and `<key>.npy`, a vector of
# class indices (age, gender, race, then race_binary), and `classnames.txt`, one `<objective>:<class>`
# per line, the classes of an objective in index order (the evaluator compares zero-shot predictions
# over these lines with the indices, so the two orders are the same).
UTKFACE_HUB_REPO = "djghosh/wds_utkface_test"
WDS_LABELS = ["age", "gender", "race"]  # the first entries of each sample's .npy vector
WDS_IMAGE_SUFFIXES = (".webp", ".png", ".jpg", ".jpeg")


def _wds_classnames(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise VlmbiasError(f"class name file not found: {path}")
    out: dict[str, list[str]] = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        objective, sep, name = line.partition(":")
        if not sep or not name.strip():
            raise VlmbiasError(f"{path} line {no}: expected <objective>:<class name>, got {line.strip()[:80]!r}")
        out.setdefault(objective.strip(), []).append(name.strip())
    missing = [a for a in WDS_LABELS if a not in out]
    if missing:
        raise VlmbiasError(f"{path} has no classes for {missing}; it has {list(out)}")
    return {a: out[a] for a in WDS_LABELS}


def wds_faces_manifest(root: str | Path, split: str = "test", image_dir: str | Path | None = None):
    """A fairness webdataset in DataComp's layout (`classnames.txt`, `<split>/*.tar`): one item per
    sample, `image_id` = `<shard>/<key>`, attributes age, gender and race decoded by the copy's own
    class names. A sample without an image or without its label vector is a listed skip; an index
    outside the class list is an error naming the shard and sample."""
    import io
    import tarfile

    import numpy as np

    root = Path(root)
    classes = _wds_classnames(root / "classnames.txt")
    shards = sorted((root / split).glob("*.tar"))
    if not shards:
        raise VlmbiasError(f"no {split}/*.tar shards under {root}")
    image_dir = Path(image_dir) if image_dir else root / f"{split}-images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for shard in shards:
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = Path(member.name).name
                key, dot, ext = name.partition(".")
                samples.setdefault(str(Path(member.name).parent / key), {})["." + ext.lower()] = \
                    tar.extractfile(member).read()
        for key, files in sorted(samples.items()):
            image_id = f"{shard.stem}/{key}"
            image = next((s for s in WDS_IMAGE_SUFFIXES if s in files), None)
            if image is None or ".npy" not in files:
                what = "no image" if image is None else "no .npy label vector"
                skipped.append({"image_id": image_id, "path": str(shard), "reason": f"{what} in the webdataset shard"})
                continue
            try:
                vector = np.load(io.BytesIO(files[".npy"]), allow_pickle=False).astype(int).ravel()
            except (ValueError, OSError):
                raise VlmbiasError(f"{shard} sample {key}: the .npy label vector cannot be read") from None
            if len(vector) < len(WDS_LABELS) or any(not 0 <= vector[i] < len(classes[a])
                                                     for i, a in enumerate(WDS_LABELS)):
                raise VlmbiasError(f"{shard} sample {key}: label vector {vector.tolist()} does not index the classes "
                                   f"of {WDS_LABELS} in classnames.txt")
            out = image_dir / (_safe_name(image_id.replace("/", "__")) + image)
            if not out.exists() or out.stat().st_size != len(files[image]):
                tmp = out.with_name(out.name + ".part")
                tmp.write_bytes(files[image])
                tmp.replace(out)
            rows.append({"image_id": image_id, "path": str(out.resolve()),
                         **{a: classes[a][vector[i]] for i, a in enumerate(WDS_LABELS)}})
    for s in skipped:
        log.warning("skipped %s (%s): %s", s["image_id"], s["path"], s["reason"])
    return pd.DataFrame(rows, columns=["image_id", "path", *WDS_LABELS]), _skipped(skipped), classes


def utkface_hub_manifest(repo: str = UTKFACE_HUB_REPO, split: str = "test", cache_dir: str | Path | None = None,
                         image_dir: str | Path | None = None):
    """Fetch DataComp's UTKFace webdataset (network needed once) and read it as `wds_faces_manifest`."""
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(repo, repo_type="dataset", allow_patterns=["classnames.txt", f"{split}/*"],
                                  cache_dir=cache_dir)
    except Exception as e:  # the hub client raises many types offline; the cause is the same
        raise VlmbiasError(
            f"cannot fetch {repo} ({split}): it needs network access or a populated Hugging Face cache; offline, "
            f"download UTKFace yourself and use type 'utkface' with a local root ({type(e).__name__})") from None
    return wds_faces_manifest(local, split, image_dir)
