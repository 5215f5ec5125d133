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
- `captions`: images with captions (`caption_set`): a CSV of image path + caption (+ optional
  labels), or the COCO captions layout. Used for caption retrieval and caption-trained methods.

FairFace's train split reads the same way: `split: train` (`train/` + `fairface_label_train.csv`;
the hub copy's `train` split).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.io import common_folder, parse_json_arg, run_cli, write_table

log = logging.getLogger(__name__)

FAIRFACE_CLASSES: dict[str, list[str]] = {
    "gender": ["Male", "Female"],
    "race": ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian"],
    "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"],
}
FAIRFACE_COLUMNS = ["file", "age", "gender", "race", "service_test"]
HUB_REPO = "HuggingFaceM4/FairFace"


def read_label_csv(csv_path: Path, required: list[str]) -> pd.DataFrame:
    if not csv_path.is_file():
        raise VlmbiasError(f"label file not found: {csv_path}")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise VlmbiasError(f"cannot parse {csv_path}: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]  # tolerate ' age, gender' style headers
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise VlmbiasError(f"{csv_path} lacks column(s) {missing}; it has {list(df.columns)}")
    return df.apply(lambda s: s.str.strip())


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
    """Read FairFace in its official layout. Returns (manifest, missing-files table, classes)."""
    root = Path(root)
    if not root.is_dir():
        raise VlmbiasError(f"FairFace root not found: {root} (expected {split}/ and fairface_label_{split}.csv inside)")
    df = read_label_csv(root / f"fairface_label_{split}.csv", FAIRFACE_COLUMNS)
    check_classes(df, FAIRFACE_CLASSES, str(root / f"fairface_label_{split}.csv"))
    df, missing = _resolve_files(df, root, "file")
    return df[["image_id", "path", *FAIRFACE_CLASSES]], missing, FAIRFACE_CLASSES


def folder_manifest(root: str | Path, csv: str | Path, file_column: str = "file",
                    attributes: dict[str, list[str]] | list[str] | None = None):
    """Any labelled image folder. `attributes`: {name: [classes]} (fixes class order and allowed
    values), a list of column names (classes taken from the data, sorted), or None (every column
    but the file column)."""
    root = Path(root)
    if not root.is_dir():
        raise VlmbiasError(f"image folder not found: {root}")
    csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
    if isinstance(attributes, dict):
        names = list(attributes)
    elif attributes:
        names = list(attributes)
    else:
        header = read_label_csv(csv_path, [file_column])
        names = [c for c in header.columns if c != file_column]
    if not names:
        raise VlmbiasError(f"{csv_path}: no attribute columns besides '{file_column}'")
    df = read_label_csv(csv_path, [file_column, *names])
    if isinstance(attributes, dict):
        classes = {a: [str(c) for c in cls] for a, cls in attributes.items()}
        check_classes(df, classes, str(csv_path))
    else:
        classes = {a: sorted(set(df[a]) - {""}) for a in names}
    df = df[df[file_column] != ""]
    df, missing = _resolve_files(df, root, file_column)
    return df[["image_id", "path", *names]], missing, classes


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
    if kind == "fairface":
        manifest, missing, classes = fairface_manifest(spec["root"], spec.get("split", "val"))
    elif kind == "fairface-hub":
        manifest, missing, classes = fairface_hub_manifest(str(spec.get("padding", "0.25")),
                                                           spec.get("split", "validation"), spec.get("cache_dir"))
    elif kind == "labelled-folder":
        manifest, missing, classes = folder_manifest(spec["root"], spec["csv"], spec.get("file_column", "file"),
                                                     spec.get("attributes"))
    elif kind == "captions":  # audited as a labelled set: its images and their labels
        manifest, _, missing, classes = caption_set(spec)
        if not classes:
            raise VlmbiasError(f"caption set {spec['root']} has no label columns ('attributes') to audit by")
    else:
        raise VlmbiasError(f"unknown dataset type {kind!r}; expected fairface, fairface-hub, labelled-folder or "
                           "captions")
    total = len(manifest) + len(missing)
    if total == 0:
        raise VlmbiasError(f"dataset {spec.get('root', kind)} lists no images")
    if len(missing):
        log.warning("%d of %d listed images are missing, e.g. %s", len(missing), total, missing["path"].iloc[0])
    if len(missing) > max_missing_fraction * total:
        raise VlmbiasError(f"{len(missing)} of {total} listed images are missing (allowed fraction "
                           f"{max_missing_fraction}); first: {missing['path'].iloc[0]}")
    if manifest["image_id"].duplicated().any():
        raise VlmbiasError(f"duplicate image ids, e.g. {manifest.loc[manifest['image_id'].duplicated(), 'image_id'].iloc[0]}")
    manifest = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    return manifest, distribution(manifest, classes), missing


def dataset_root(spec: dict, manifest: pd.DataFrame) -> Path:
    """The folder the manifest's paths are stored relative to: the dataset's root, or (hub copy) the
    folder its images were unpacked to."""
    if spec.get("type") in ("fairface", "labelled-folder", "captions"):
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
