"""Datasets -> one manifest schema (image_id, path, one column per attribute) + class distribution.

Dataset types (config `datasets.<name>.type`):
- `fairface`: the official layout on disk: `<root>/val/<n>.jpg` + `<root>/fairface_label_val.csv`
  (columns file, age, gender, race, service_test). `padding` (0.25 or 1.25) only records which
  release the root holds (`fairface-img-margin025-trainval` or `...margin125...`).
- `fairface-hub`: the Hugging Face copy `HuggingFaceM4/FairFace` (configs `0.25`/`1.25`, split
  `validation`), fetched as parquet through huggingface_hub and unpacked to a cache folder. The
  hub stores labels as integers whose order differs from the CSV's, so they are decoded by the
  class names stored in the parquet files' own schema, never by position.
- `labelled-folder`: any image folder + a CSV with a file column and attribute columns; the
  attributes and their classes come from the CSV unless declared in config.
- `utkface` (+ `-hub`), `celeba`, `facet`, `socialcounterfactuals` (+ `-hub`): the published layouts, read by `vlmbias.audit.published`
  (docs/datasets.md). FACET items are persons: the manifest's optional `crop` column holds each
  person's box (`x,y,width,height` in pixels), applied where images are opened (embedding, grids).
- `captions`: images with captions (`caption_set`): a CSV of image path + caption (+ optional
  labels), or the COCO captions layout. Used for caption retrieval and caption-trained methods.
- `part`: a seeded, stratified part (reference or evaluation) of another dataset, whose spec is
  nested under `of` (vlmbias.audit.parts); a method can fit on one part and be audited on the other.

FairFace's train split reads the same way: `split: train` (`train/` + `fairface_label_train.csv`;
the hub copy's `train` split).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path

import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.audit.labels import FAIRFACE_CLASSES, read_label_csv  # noqa: F401 (imported from here too)
from vlmbias.io import common_folder, parse_json_arg, run_cli, write_table

log = logging.getLogger(__name__)

FAIRFACE_COLUMNS = ["file", "age", "gender", "race", "service_test"]
HUB_REPO = "HuggingFaceM4/FairFace"


def natural_key(label: str):
    """Numeric-aware sort key: classes that carry a number sort by their first number ('0-2', '3-9',
    '10-19', ..., 'more than 70'), before classes without one, which sort as text (case-insensitive)."""
    m = re.search(r"\d+(?:\.\d+)?", str(label))
    return (0, float(m.group()), str(label).casefold()) if m else (1, 0.0, str(label).casefold())


def class_order(values, declared: list | None = None) -> list[str]:
    """The classes of an attribute in order: the declared ones first (config `classes:`), then the
    rest in natural (numeric-aware) order."""
    declared = [str(c) for c in (declared or [])]
    rest = sorted((set(map(str, values)) - {""}) - set(declared), key=natural_key)
    return declared + rest


def normalise_labels(df: pd.DataFrame, names: list[str], source: str, strict: bool = False,
                     canonical: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Labels that differ only in case or surrounding space are one class: they are merged (into the
    declared spelling, else the most frequent one) with a warning naming the variants, or, with
    `strict`, refused. Space around every label of a class (', Male' style CSVs) is trimmed silently."""
    out = df.copy()
    for attr in names:
        raw = out[attr].astype(str)
        trimmed = raw.str.strip()
        variants = pd.DataFrame({"raw": raw, "key": trimmed.str.casefold()})
        spelled = {c.casefold(): c for c in (canonical or {}).get(attr, [])}
        mapping, merged = {}, []
        for key, grp in variants.groupby("key", sort=True):
            counts = grp["raw"].value_counts()
            forms = sorted(counts.index, key=lambda v: (-counts[v], v))
            target = spelled.get(key, forms[0].strip())
            mapping.update({f: target for f in forms})
            if key and (len(forms) > 1 or forms[0].strip() != target):
                merged.append((target, forms))
        if merged:
            words = "; ".join(f"{', '.join(repr(f) for f in forms)} -> {target!r}" for target, forms in merged)
            if strict:
                raise VlmbiasError(f"{source}: attribute '{attr}' has labels that differ only in case or surrounding "
                                   f"space ({words}); make them identical in the CSV, or drop strict labels "
                                   "(--strict-labels / strict_labels) to merge them")
            log.warning("%s: attribute '%s': labels that differ only in case or surrounding space are merged: %s",
                        source, attr, words)
        out[attr] = raw.map(mapping)
    return out


def check_classes(df: pd.DataFrame, classes: dict[str, list[str]], source: str) -> None:
    for attr, allowed in classes.items():
        bad = sorted(set(df[attr]) - set(allowed))
        if bad:
            raise VlmbiasError(f"{source}: attribute '{attr}' has unknown class(es) {bad[:5]}; expected {allowed}")


def _resolve_files(df: pd.DataFrame, root: Path, file_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach absolute paths; split off rows whose file is missing (reported, not silently lost)."""
    rel = df[file_column]
    escapes = rel.map(lambda p: Path(p).is_absolute() or ".." in Path(p).parts)
    if escapes.any():
        raise VlmbiasError(f"file entries must be relative paths inside {root}: {rel[escapes].tolist()[:3]}")
    paths = rel.map(lambda p: str((root / p).resolve()))
    exists = paths.map(lambda p: Path(p).is_file())
    out = df.assign(image_id=rel, path=paths)
    missing = out.loc[~exists, ["image_id", "path"]].assign(reason="file not found")
    return out.loc[exists], missing


def fairface_manifest(root: str | Path, split: str = "val") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Read FairFace in its official layout. Returns (manifest, missing-files table, classes).
    `split` "train+val" pools both splits (image ids keep their train/ or val/ folder)."""
    root = Path(root)
    if "+" in split:
        parts = [fairface_manifest(root, s) for s in split.split("+")]
        return (pd.concat([m for m, _, _ in parts], ignore_index=True),
                pd.concat([x for _, x, _ in parts], ignore_index=True), FAIRFACE_CLASSES)
    if not root.is_dir():
        raise VlmbiasError(f"FairFace root not found: {root} (expected {split}/ and fairface_label_{split}.csv inside)")
    df = read_label_csv(root / f"fairface_label_{split}.csv", FAIRFACE_COLUMNS)
    check_classes(df, FAIRFACE_CLASSES, str(root / f"fairface_label_{split}.csv"))
    df, missing = _resolve_files(df, root, "file")
    return df[["image_id", "path", *FAIRFACE_CLASSES]], missing, FAIRFACE_CLASSES


FILE_COLUMN_GUESSES = ("path", "file", "filename", "file_name", "image", "image_path", "img", "filepath")


def folder_manifest(root: str | Path, csv: str | Path, file_column: str = "file",
                    attributes: dict[str, list[str]] | list[str] | None = None,
                    classes: dict[str, list[str]] | None = None, strict_labels: bool = False):
    """Any labelled image folder. `attributes`: {name: [classes]} (fixes class order and allowed
    values), a list of column names, or None (every column but the file column); `classes`:
    {name: [classes]} declares an order only (classes it omits follow in natural order). Without
    either, classes come in natural (numeric-aware) order. Labels differing only in case or
    surrounding space are merged with a warning, or refused with `strict_labels`."""
    root = Path(root)
    if not root.is_dir():
        raise VlmbiasError(f"image folder not found: {root}")
    csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
    if not csv_path.is_file():
        where = "" if Path(csv).is_absolute() else f" (looked for it inside the dataset folder {root.resolve()})"
        raise VlmbiasError(f"label file not found: {csv}{where}")
    header = read_label_csv(csv_path, [], strip=False)
    if file_column not in header.columns:
        guess = [c for c in header.columns if c.lower() in FILE_COLUMN_GUESSES]
        hint = (f"; if {guess[0]!r} holds the image files, pass --file-column {guess[0]} (config: "
                f"file_column: {guess[0]})" if guess else
                "; name the column holding the image files with --file-column (config: file_column)")
        raise VlmbiasError(f"{csv_path} has no file column {file_column!r} (it has {list(header.columns)}){hint}")
    if isinstance(attributes, dict):
        names = list(attributes)
    elif attributes:
        names = list(attributes)
    else:
        names = [c for c in header.columns if c != file_column]
    if not names:
        raise VlmbiasError(f"{csv_path}: no attribute columns besides '{file_column}'")
    unknown = [a for a in (classes or {}) if a not in names]
    if unknown:
        raise VlmbiasError(f"{csv_path}: classes are declared for {unknown}, which are not attributes ({names})")
    df = read_label_csv(csv_path, [file_column, *names], strip=False)
    df[file_column] = df[file_column].str.strip()
    declared = {a: [str(c) for c in cls] for a, cls in attributes.items()} if isinstance(attributes, dict) else {}
    df = normalise_labels(df, names, str(csv_path), strict_labels,
                          {**{a: [str(c) for c in v] for a, v in (classes or {}).items()}, **declared})
    if declared:
        check_classes(df, declared, str(csv_path))
        order = declared
    else:
        order = {a: class_order(df[a], (classes or {}).get(a)) for a in names}
    for a in names:  # an empty column would otherwise drop out of every table without a word
        if not (df[a] != "").any():
            log.warning("%s: column %r labels no image (every entry is empty), so no metric can be computed "
                        "for %r; fill it in or leave the column out", csv_path, a, a)
    df = df[df[file_column] != ""]
    df, missing = _resolve_files(df, root, file_column)
    return df[["image_id", "path", *names]], missing, order


def _hub_class_names(parquet_file: Path) -> dict[str, list[str]]:
    """ClassLabel names from the `huggingface` metadata that `datasets` writes into parquet."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(parquet_file).metadata or {}
    raw = meta.get(b"huggingface")
    if raw is None:
        raise VlmbiasError(f"{parquet_file} has no Hugging Face feature metadata; cannot decode label integers")
    features = json.loads(raw)["info"]["features"]
    return {k: v["names"] for k, v in features.items() if isinstance(v, dict) and "names" in v}


def _canonical(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip().lower()


def hub_parquet_manifest(parquet_files: list[Path], image_dir: Path):
    """Decode hub parquet shards: integer labels -> FairFace class names (by name), images -> files."""
    import pyarrow.parquet as pq

    frames = []
    image_dir.mkdir(parents=True, exist_ok=True)
    for shard in sorted(parquet_files):
        names = _hub_class_names(shard)
        table = pq.read_table(shard).to_pandas()
        for attr, ours in FAIRFACE_CLASSES.items():
            if attr not in table.columns or attr not in names:
                raise VlmbiasError(f"{shard}: no labelled column '{attr}'")
            by_name = {_canonical(c): c for c in ours}
            try:
                lookup = [by_name[_canonical(n)] for n in names[attr]]
            except KeyError as e:
                raise VlmbiasError(f"{shard}: hub class {e} of '{attr}' is not a FairFace class") from None
            table[attr] = [lookup[int(i)] for i in table[attr]]
        ids = [f"{shard.stem}/{i}" for i in range(len(table))]
        paths = []
        for image_id, img in zip(ids, table["image"]):
            out = image_dir / (image_id.replace("/", "_") + ".jpg")
            if not out.exists():
                out.write_bytes(img["bytes"])
            paths.append(str(out.resolve()))
        frames.append(pd.DataFrame({"image_id": ids, "path": paths, **{a: table[a] for a in FAIRFACE_CLASSES}}))
    return pd.concat(frames, ignore_index=True)


def fairface_hub_manifest(config_name: str = "0.25", split: str = "validation", cache_dir: str | Path | None = None):
    """Fetch the hub copy (needs network once; later runs reuse the cache)."""
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(HUB_REPO, repo_type="dataset", allow_patterns=[f"{config_name}/{split}-*.parquet"],
                                  cache_dir=cache_dir)
    except Exception as e:  # the hub client raises many types offline; the cause is the same
        raise VlmbiasError(
            f"cannot fetch {HUB_REPO} ({config_name}/{split}): it needs network access or a populated Hugging Face "
            f"cache; offline, download FairFace yourself and use type 'fairface' with a local root ({type(e).__name__})"
        ) from None
    shards = sorted(Path(local, config_name).glob(f"{split}-*.parquet"))
    if not shards:
        raise VlmbiasError(f"{HUB_REPO}: no {config_name}/{split} parquet files found in {local}")
    manifest = hub_parquet_manifest(shards, Path(local, config_name, f"{split}-images"))
    return manifest, manifest.iloc[0:0][["image_id", "path"]].assign(reason=""), FAIRFACE_CLASSES


CAPTION_LAYOUTS = ("csv", "coco")


def caption_set(spec: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """A caption set (dataset type `captions`): images with one or more captions each.

    Layouts (`layout`, default csv):
    - `csv`: `root` + `csv` (relative to root or absolute), one row per caption: `file_column`
      (default file), `caption_column` (default caption), and optional label columns named by
      `attributes` (a list, or {attribute: [classes]}); an image's labels must agree across its rows;
    - `coco`: the COCO captions layout, `<root>/<split>2017/` + `<root>/annotations/captions_<split>2017.json`
      (`split` default val): images without a caption are left out.
    Returns (images: image_id, path, label columns; captions: image_id, caption; missing files;
    {attribute: classes})."""
    root = Path(spec["root"])
    if not root.is_dir():
        raise VlmbiasError(f"caption set folder not found: {root}")
    layout = spec.get("layout", "csv")
    if layout == "coco":
        split = spec.get("split", "val")
        ann = root / "annotations" / f"captions_{split}2017.json"
        if not ann.is_file():
            raise VlmbiasError(f"COCO caption file not found: {ann} (expected {split}2017/ and "
                               f"annotations/captions_{split}2017.json under {root})")
        try:
            data = json.loads(ann.read_text(encoding="utf-8"))
            files = {int(im["id"]): f"{split}2017/{im['file_name']}" for im in data["images"]}
            rows = [{"file": files[int(a["image_id"])], "caption": str(a["caption"]).strip()}
                    for a in data["annotations"]]
        except (ValueError, KeyError, TypeError) as e:
            raise VlmbiasError(f"{ann} is not a COCO captions file ({type(e).__name__}: {e})") from None
        table, names, classes = pd.DataFrame(rows, columns=["file", "caption"]), [], {}
        file_column, caption_column = "file", "caption"
    elif layout == "csv":
        if not spec.get("csv"):
            raise VlmbiasError(f"caption set {root}: layout csv needs a 'csv' file of image paths and captions")
        file_column, caption_column = spec.get("file_column", "file"), spec.get("caption_column", "caption")
        attributes = spec.get("attributes") or []
        names = list(attributes)
        csv_path = Path(spec["csv"]) if Path(spec["csv"]).is_absolute() else root / spec["csv"]
        table = read_label_csv(csv_path, [file_column, caption_column, *names])
        if isinstance(attributes, dict):
            classes = {a: [str(c) for c in cls] for a, cls in attributes.items()}
            check_classes(table[table[names].ne("").all(axis=1)], classes, str(csv_path))
        else:
            classes = {a: sorted(set(table[a]) - {""}) for a in names}
    else:
        raise VlmbiasError(f"unknown caption set layout {layout!r}; expected one of {list(CAPTION_LAYOUTS)}")
    table = table[(table[file_column] != "") & (table[caption_column] != "")]
    if table.empty:
        raise VlmbiasError(f"caption set {root} lists no captioned image")
    images = table.drop_duplicates(file_column)
    if names:
        clash = table.groupby(file_column)[names].nunique().gt(1).any(axis=1)
        if clash.any():
            raise VlmbiasError(f"caption set {root}: image {clash[clash].index[0]!r} has different labels on "
                               "different caption rows")
    images, missing = _resolve_files(images[[file_column, *names]], root, file_column)
    images = images[["image_id", "path", *names]].sort_values("image_id", kind="stable").reset_index(drop=True)
    captions = (table.rename(columns={file_column: "image_id", caption_column: "caption"})[["image_id", "caption"]]
                [lambda d: d["image_id"].isin(images["image_id"])].reset_index(drop=True))
    return images, captions, missing, classes


def distribution(manifest: pd.DataFrame, classes: dict[str, list[str]]) -> pd.DataFrame:
    """Counts and percent per attribute class (zeros kept), in class order."""
    rows = []
    for attr, order in classes.items():
        counts = manifest[attr].value_counts().reindex(order, fill_value=0)
        total = int(counts.sum())
        for cls, n in counts.items():
            rows.append({"attribute": attr, "class": cls, "count": int(n), "percent": 100.0 * n / total if total else 0.0})
    return pd.DataFrame(rows, columns=["attribute", "class", "count", "percent"])


def classes_from_distribution(dist: pd.DataFrame) -> dict[str, list[str]]:
    return {a: g["class"].tolist() for a, g in dist.groupby("attribute", sort=False)}


def build_manifest(spec: dict, max_missing_fraction: float = 0.0):
    """Dispatch on the dataset type. Returns (manifest, distribution, missing)."""
    kind = spec.get("type")
    if kind == "part":
        return part_manifest(spec, max_missing_fraction)
    if kind == "fairface":
        manifest, missing, classes = fairface_manifest(spec["root"], spec.get("split", "val"))
    elif kind == "fairface-hub":
        manifest, missing, classes = fairface_hub_manifest(str(spec.get("padding", "0.25")),
                                                           spec.get("split", "validation"), spec.get("cache_dir"))
    elif kind == "labelled-folder":
        manifest, missing, classes = folder_manifest(spec["root"], spec["csv"], spec.get("file_column", "file"),
                                                     spec.get("attributes"), spec.get("classes"),
                                                     bool(spec.get("strict_labels", False)))
    elif kind in ("utkface", "utkface-hub", "celeba", "facet", "socialcounterfactuals", "socialcounterfactuals-hub"):
        from vlmbias.audit import published  # reads the published layouts; imports this module's helpers

        if kind == "utkface":
            manifest, missing, classes = published.utkface_manifest(spec["root"])
        elif kind == "utkface-hub":
            manifest, missing, classes = published.utkface_hub_manifest(
                spec.get("repo", published.UTKFACE_HUB_REPO), spec.get("split", "test"), spec.get("cache_dir"),
                spec.get("image_dir"))
        elif kind == "celeba":
            manifest, missing, classes = published.celeba_manifest(spec["root"], spec.get("split", "test"),
                                                                   spec.get("attributes"))
        elif kind == "socialcounterfactuals":
            manifest, missing, classes = published.socialcounterfactuals_manifest(
                spec["root"], spec.get("image_dir"), spec.get("set_types"), spec.get("classes"))
        elif kind == "socialcounterfactuals-hub":
            manifest, missing, classes = published.socialcounterfactuals_hub_manifest(
                spec.get("repo", published.SOCIALCF_HUB_REPO), spec.get("files", "data/train-*.parquet"),
                spec.get("cache_dir"), image_dir=spec.get("image_dir"), set_types=spec.get("set_types"),
                classes=spec.get("classes"))
        else:
            manifest, missing, classes = published.facet_manifest(spec["root"], spec.get("csv"),
                                                                  spec.get("require_visible"),
                                                                  bool(spec.get("exclude_minimal", False)))
    elif kind == "captions":  # audited as a labelled set: its images and their labels
        manifest, _, missing, classes = caption_set(spec)
        if not classes:
            raise VlmbiasError(f"caption set {spec['root']} has no label columns ('attributes') to audit by")
    else:
        raise VlmbiasError(f"unknown dataset type {kind!r}; expected fairface, fairface-hub, labelled-folder, "
                           "captions, utkface, utkface-hub, celeba, facet, socialcounterfactuals, "
                           "socialcounterfactuals-hub or part")
    if spec.get("intersections"):
        from vlmbias.audit.intersect import add_intersections

        manifest, classes = add_intersections(manifest, classes, spec["intersections"])
    total = len(manifest) + len(missing)
    if total == 0:
        raise VlmbiasError(f"dataset {spec.get('root', kind)} lists no images")
    if "reason" in missing.columns:  # documented skips (e.g. malformed names) are listed, not counted
        skips = missing[missing["reason"].fillna("file not found") != "file not found"]
        if len(skips):
            log.warning("%d of %d listed entries skipped: %s", len(skips), total,
                        "; ".join(sorted(set(skips["reason"]))))
        missing, listed = missing.drop(skips.index), missing
    else:
        listed = missing
    if len(missing):
        log.warning("%d of %d listed images are missing, e.g. %s", len(missing), total, missing["path"].iloc[0])
    if len(missing) > max_missing_fraction * total:
        need = math.ceil(len(missing) / total * 10_000) / 10_000  # rounded up, so that it does allow them
        raise VlmbiasError(f"{len(missing)} of {total} listed images are missing (allowed fraction "
                           f"{max_missing_fraction}); first: {missing['path'].iloc[0]}; to audit the others, allow a "
                           f"fraction of at least {need:g}: --max-missing-fraction {need:g} on the command line, the "
                           "dataset's max_missing_fraction in a workflow config")
    if manifest.empty:
        raise VlmbiasError(f"dataset {spec.get('root', kind)}: none of its {total} entries is usable "
                           "(each skip and its reason is in the log)")
    if manifest["image_id"].duplicated().any():
        raise VlmbiasError(f"duplicate image ids, e.g. {manifest.loc[manifest['image_id'].duplicated(), 'image_id'].iloc[0]}")
    manifest = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    return manifest, distribution(manifest, classes), listed


def part_manifest(spec: dict, max_missing_fraction: float = 0.0):
    """Dataset type `part`: the parent's manifest (`of`, the parent's own spec), of which the part
    keeps its share (vlmbias.audit.parts). The parent's missing files are the part's listing too, and
    the parent's own max_missing_fraction, when it sets one, applies to them."""
    from vlmbias.audit.parts import keep_part

    parent = spec.get("of")
    if not isinstance(parent, dict) or not parent.get("type"):
        raise VlmbiasError("a dataset of type part needs its parent dataset's spec under 'of'")
    if parent["type"] == "part":
        raise VlmbiasError("a part's parent ('of') may not be a part itself; split the original dataset")
    whole, whole_dist, listed = build_manifest(parent, parent.get("max_missing_fraction", max_missing_fraction))
    classes = classes_from_distribution(whole_dist)
    stratify = spec.get("stratify")
    unknown = [a for a in stratify or [] if a not in classes]
    if unknown:
        raise VlmbiasError(f"part stratify names {unknown}, which the parent dataset does not label (its "
                           f"attributes: {list(classes)})")
    resolved = {**spec, "stratify": list(classes) if stratify is None else list(stratify)}
    manifest = keep_part(whole, resolved)
    if manifest.empty:
        raise VlmbiasError(f"the {spec['part']} part keeps none of the parent's {len(whole)} images "
                           f"(fraction {spec.get('fraction', 0.5)}); the parent is too small to split")
    log.info("part %s: kept %d of %d images of the parent (%s, fraction %s of them in the reference part, "
             "seed %s, stratified by %s)", spec["part"], len(manifest), len(whole), parent["type"],
             spec.get("fraction", 0.5), spec.get("seed", 0), ", ".join(resolved["stratify"]) or "nothing")
    return manifest, distribution(manifest, classes), listed


def dataset_root(spec: dict, manifest: pd.DataFrame) -> Path:
    """The folder the manifest's paths are stored relative to: the dataset's root, or (hub copy) the
    folder its images were unpacked to; a part's are its parent's."""
    if spec.get("type") == "part" and isinstance(spec.get("of"), dict):
        return dataset_root(spec["of"], manifest)
    if spec.get("type") in ("fairface", "labelled-folder", "captions", "utkface", "celeba", "facet"):
        return Path(spec["root"]).resolve()
    return common_folder(manifest["path"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.audit.data", description="Build a dataset manifest.")
    p.add_argument("--spec-json", required=True, help="the dataset's config block as JSON")
    p.add_argument("--max-missing-fraction", type=float, default=0.0)
    p.add_argument("--manifest", required=True)
    p.add_argument("--distribution", required=True)
    p.add_argument("--missing", required=True)
    a = p.parse_args(argv)
    spec = parse_json_arg(a.spec_json, "--spec-json")
    manifest, dist, missing = build_manifest(spec, a.max_missing_fraction)
    write_table(missing, a.missing)
    write_table(dist, a.distribution)
    # image paths are stored relative to the dataset's folder (docs/artifacts.md); read_table resolves them
    write_table(manifest, a.manifest, path_root=dataset_root(spec, manifest))
    log.info("manifest: %d images; %s", len(manifest), ", ".join(f"{k}: {len(v)} classes" for k, v in
                                                                classes_from_distribution(dist).items()))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
