"""Label acquired images with gender, race and age (rule `label`) and draw balanced fine-tuning sets.

Label sources (config `source`):
- `deepface`: `DeepFace.analyze(actions=["gender", "age", "race"], enforce_detection=True)` as in the
  thesis; an image without a detectable face is dropped and listed in `dropped.csv`.
  DeepFace runs on the engine named by `engine` (default `onnx`: onnxruntime graphs, no pickled
  weights; deepface would otherwise pick pytorch whenever torch is installed and load `.pth`
  pickles). Weights live in `$DEEPFACE_HOME/.deepface/weights` (`deepface_home` in config sets
  it): `gender_model_weights.onnx`, `age_model_weights.onnx`, `race_model_single_batch.onnx`, plus
  the detector's own files. They are loaded once before the first image, so a missing file fails
  the stage with its name instead of dropping every image. `weights_sha256: {file: digest}` pins
  files by SHA-256 (over `DEEPFACE_SHA256`, which records no real digest: see there); a pinned file
  whose digest differs stops the stage, and each unpinned file's digest is logged. Images reach
  DeepFace as decoded arrays, through the image gate (`vlmbias.imagegate`, `images.max_pixels`);
  a refused image is dropped with the gate's sentence as its reason.

  Mapping to the FairFace schema (kept side by side with DeepFace's raw output):
  - gender: Man -> Male, Woman -> Female (`gender_source` keeps DeepFace's label);
  - race: indian -> Indian, black -> Black, white -> White, middle eastern -> Middle Eastern,
    latino hispanic -> Latino_Hispanic, and asian -> `asian_as` (default "East Asian"). DeepFace
    has ONE Asian class where FairFace has two, so with the default no image is ever labelled
    "Southeast Asian" (or "East Asian" with `asian_as: Southeast Asian`): that class is left out
    of the labeller's classes (distribution, balanced sets) and a note is logged.
    `race_source` keeps DeepFace's label;
  - age: DeepFace's apparent age in years (`age_years`) -> FairFace's bins "0-2", "3-9", "10-19",
    ..., "60-69", "more than 70" (70 and older).
  DeepFace's scores are kept: `gender_score_<Man|Woman>` and `race_score_<class>` (percent),
  `gender_confidence`/`race_confidence` (score of the chosen class), `face_confidence` (detector),
  `n_faces`. With several faces, `multiple_faces` picks the `largest` (default), the `first` (as
  `analyze(...)[0]` in the thesis) or `drop`s the image.
  Raw results are cached by image hash and DeepFace settings (`cache`, default
  `.label-cache.parquet` beside the labels) so a rerun labels only new images.
- `csv`: labels supplied by the user: `csv` (path), `file_column` (default `file`), `match`
  (`origin` (default; relative entries resolved against `root`), `image_id` or `sha1`), and
  `attributes` (list, or {attribute: [classes]}); classes are validated (gender/race/age default to
  FairFace's). `caption_column` (optional) names a column whose text replaces the keyword as the
  image's caption (the text the fine-tuning objectives pair it with). `error_rate` (one rate, or
  one per attribute; default 0) imitates a classifier's error: it flips exactly that fraction of
  the labels to another class chosen at random (seeded by `seed`); `true_<attr>` and
  `<attr>_flipped` then record what was changed, so the effect of label noise can be measured.
  The calibration world's search stand-in comes with such a CSV of true labels.

Outputs: `labels.parquet` (`image_id, path, <attributes>, keyword, concept, caption, label_source,
sha1, origin, acquire_source` + the source's own columns), `dropped.csv` (`image_id, path, reason`),
a distribution table (`keyword, concept, attribute, class, count, percent`, zeros kept) and,
optionally, a balanced fine-tuning set (`balanced_set`).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vlmbias import VlmbiasError
from vlmbias.audit.data import FAIRFACE_CLASSES
from vlmbias.imagegate import DEFAULT_MAX_PIXELS, check_limit, open_image
from vlmbias.io import common_folder, parse_json_arg, read_table, run_cli, table_path_root, write_table

log = logging.getLogger(__name__)

LABEL_SOURCES = ("deepface", "csv")
ATTRIBUTES = ["gender", "race", "age"]
BASE_COLUMNS = ["image_id", "path"]
CONTEXT_COLUMNS = ["keyword", "concept", "caption", "label_source", "sha1", "origin", "acquire_source"]
DROPPED_COLUMNS = ["image_id", "path", "reason"]
DISTRIBUTION_COLUMNS = ["keyword", "concept", "attribute", "class", "count", "percent"]
NO_FACE = "no face detected"

DEEPFACE_GENDER = {"Man": "Male", "Woman": "Female"}
DEEPFACE_RACE = {"indian": "Indian", "black": "Black", "white": "White", "middle eastern": "Middle Eastern",
                 "latino hispanic": "Latino_Hispanic"}  # + "asian" -> asian_as
DEEPFACE_WEIGHTS = {"Gender": "gender_model_weights.onnx", "Age": "age_model_weights.onnx",
                    "Race": "race_model_single_batch.onnx"}
# Expected SHA-256 of each weight file. None: NOT KNOWN here. These files come from deepface's
# download URLs (GitHub releases / the Hugging Face hub), which this project could not reach when
# the pins were written, so no real digest is recorded; the stage logs the digest of every unpinned
# file it loads, and `weights_sha256: {file: digest}` in the label spec pins it (a mismatch stops
# the stage).
DEEPFACE_SHA256: dict[str, str | None] = {name: None for name in DEEPFACE_WEIGHTS.values()}
DEEPFACE_DEFAULTS = {"detector_backend": "opencv", "align": True, "engine": "onnx", "asian_as": "East Asian",
                     "multiple_faces": "largest", "deepface_home": None, "cache": None, "weights_sha256": None}
SOURCE_KEYS = {"deepface": set(DEEPFACE_DEFAULTS),
               "csv": {"csv", "file_column", "match", "root", "attributes", "caption_column", "error_rate", "seed"}}
_AGE_EDGES = [(3, "0-2"), (10, "3-9"), (20, "10-19"), (30, "20-29"), (40, "30-39"), (50, "40-49"),
              (60, "50-59"), (70, "60-69")]


def age_bin(years: float) -> str:
    """FairFace's age bin of an age in years (DeepFace gives an integer apparent age)."""
    for upper, name in _AGE_EDGES:
        if years < upper:
            return name
    return "more than 70"


def _score_col(attr: str, label: str) -> str:
    return f"{attr}_score_{label.replace(' ', '_')}"


# ------------------------------------------------------------------------------------------ deepface

def _deepface_classes(asian_as: str) -> dict[str, list[str]]:
    other = {"East Asian": "Southeast Asian", "Southeast Asian": "East Asian"}[asian_as]
    return {"gender": FAIRFACE_CLASSES["gender"], "race": [c for c in FAIRFACE_CLASSES["race"] if c != other],
            "age": FAIRFACE_CLASSES["age"]}


def pinned_hashes(spec_pins) -> dict[str, str | None]:
    """DEEPFACE_SHA256 overlaid with the spec's `weights_sha256` ({file name: hex digest})."""
    if spec_pins is None:
        spec_pins = {}
    if not isinstance(spec_pins, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{64}", v)
            for k, v in spec_pins.items()):
        raise VlmbiasError(f"label: weights_sha256 must map weight file names to 64-hex-digit SHA-256 digests, "
                           f"got {spec_pins!r}")
    return {**DEEPFACE_SHA256, **{k: v.lower() for k, v in spec_pins.items()}}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights(folder: Path, pins: dict[str, str | None]) -> dict[str, str]:
    """SHA-256 of every pinned file present in `folder` ({name: digest}); a file whose digest differs
    from its pin stops the stage with a sentence naming the file and both digests."""
    found = {}
    for name, expected in pins.items():
        path = folder / name
        if not path.is_file():
            continue
        found[name] = actual = _sha256(path)
        if expected is not None and actual != expected:
            raise VlmbiasError(f"DeepFace weight file {path} has SHA-256 {actual}, expected {expected} "
                               f"(label weights_sha256); replace the file with the pinned one or update the pin")
    return found


def _load_bgr(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode through the image gate (GIF/WebP/EXIF rotation handled alike for every image) into
    DeepFace's BGR array; DeepFace never opens a file itself."""
    rgb = open_image(path, max_pixels, exif_transpose=True)
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


class DeepFaceLabeller:
    """DeepFace set up once (engine, weights, detector); `analyze(path)` -> raw result or a drop reason."""

    def __init__(self, opts: dict, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.opts, self.max_pixels = opts, check_limit(max_pixels)
        self.pins = pinned_hashes(opts["weights_sha256"])
        if opts["deepface_home"]:
            os.environ["DEEPFACE_HOME"] = str(Path(opts["deepface_home"]).resolve())
        # Read by deepface when it first picks an engine; set before the import so torch is not chosen.
        os.environ["DEEPFACE_BACKEND_ENGINE"] = opts["engine"]
        try:
            from deepface import DeepFace
        except ImportError as e:
            raise VlmbiasError(f"label source 'deepface' needs the deepface package and its dependencies, which "
                               f"vlmbias declares (pip install -e . installs them): {e}") from None
        self.DeepFace = DeepFace
        try:
            from deepface.commons import backend_utils
            engine = backend_utils.get_backend_engine()
        except ImportError:  # deepface < 0.0.100 runs tensorflow only
            engine = "tensorflow"
        if engine != opts["engine"]:
            raise VlmbiasError(f"deepface runs on {engine!r} in this process but config asks for engine "
                               f"{opts['engine']!r}; run the stage in a fresh process")
        try:
            from deepface.modules.exceptions import FaceNotDetected
            self.no_face_errors: tuple = (FaceNotDetected,)
        except ImportError:
            self.no_face_errors = ()
        self.home = Path(os.environ.get("DEEPFACE_HOME", Path.home())) / ".deepface" / "weights"
        check_weights(self.home, self.pins)  # files already there are checked before deepface loads them
        self._build_models()
        # ... and files deepface has just downloaded, before any image is analysed
        for name, digest in check_weights(self.home, self.pins).items():
            if self.pins.get(name) is None:
                log.warning("DeepFace weight file %s is not pinned (SHA-256 %s); pin it with label spec "
                            "weights_sha256: {%s: %s}", name, digest, name, digest)
        try:
            from importlib.metadata import version
            self.version = version("deepface")
        except Exception:
            self.version = "unknown"

    def _build_models(self) -> None:
        """Load every model now: offline, a missing weight file must fail loudly, not drop each image."""
        models = [("facial_attribute", m) for m in ("Gender", "Age", "Race")]
        if self.opts["detector_backend"] != "skip":
            models.append(("face_detector", self.opts["detector_backend"]))
        for task, name in models:
            try:
                self.DeepFace.build_model(model_name=name, task=task)
            except Exception as e:  # deepface wraps download/load failures in ValueError and others
                hint = (f"; offline, put {DEEPFACE_WEIGHTS[name]} into {self.home}"
                        if name in DEEPFACE_WEIGHTS and self.opts["engine"] == "onnx" else
                        f"; offline, put its weight files into {self.home}")
                raise VlmbiasError(f"cannot load DeepFace's {name} model ({type(e).__name__}: {e}){hint}") from None

    def fingerprint(self) -> str:
        """Changes when anything that changes DeepFace's raw answer changes (settings, version, weights)."""
        weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.home.glob("*")
                         if p.is_file()) if self.home.is_dir() else []
        key = {k: self.opts[k] for k in ("detector_backend", "align", "engine", "multiple_faces")}
        return hashlib.sha1(json.dumps([key, self.version, weights]).encode()).hexdigest()[:16]

    def _is_no_face(self, e: Exception) -> bool:
        return isinstance(e, self.no_face_errors) or "could not be detected" in str(e).lower()

    def analyze(self, path: str) -> dict:
        """Raw DeepFace answer for one image: {'status': ok|no-face|error, 'reason', ...raw fields}."""
        try:
            img = _load_bgr(path, self.max_pixels)
        except Exception as e:
            return {"status": "error", "reason": f"cannot read image: {type(e).__name__}: {e}"}
        try:
            faces = self.DeepFace.analyze(img_path=img, actions=["gender", "age", "race"],
                                          detector_backend=self.opts["detector_backend"], enforce_detection=True,
                                          align=bool(self.opts["align"]), silent=True)
        except Exception as e:  # deepface signals "no face" with an exception; anything else is an error
            if self._is_no_face(e):
                return {"status": "no-face", "reason": NO_FACE}
            return {"status": "error", "reason": f"deepface failed: {type(e).__name__}: {e}"}
        if isinstance(faces, dict):  # very old releases return one dict
            faces = [faces]
        if not faces:
            return {"status": "no-face", "reason": NO_FACE}
        if len(faces) > 1 and self.opts["multiple_faces"] == "drop":
            return {"status": "no-face", "reason": f"{len(faces)} faces (multiple_faces: drop)"}
        if self.opts["multiple_faces"] == "largest":
            face = max(faces, key=lambda f: (f.get("region") or {}).get("w", 0) * (f.get("region") or {}).get("h", 0))
        else:
            face = faces[0]
        out = {"status": "ok", "reason": "", "gender_source": face["dominant_gender"],
               "race_source": face["dominant_race"], "age_years": float(face["age"]),
               "face_confidence": float(face.get("face_confidence") or 0.0), "n_faces": len(faces)}
        for attr in ("gender", "race"):
            for label, score in face[attr].items():
                out[_score_col(attr, label)] = float(score)
        return out


def _map_deepface(raw: pd.DataFrame, asian_as: str) -> pd.DataFrame:
    race_map = {**DEEPFACE_RACE, "asian": asian_as}
    unknown = sorted((set(raw["gender_source"]) - set(DEEPFACE_GENDER)) | (set(raw["race_source"]) - set(race_map)))
    if unknown:
        raise VlmbiasError(f"deepface returned class(es) {unknown} that have no FairFace mapping")
    out = raw.assign(gender=raw["gender_source"].map(DEEPFACE_GENDER), race=raw["race_source"].map(race_map),
                     age=raw["age_years"].map(age_bin))
    records = raw.to_dict("records")
    for attr in ("gender", "race"):  # the score of the class DeepFace chose
        out[f"{attr}_confidence"] = [r[_score_col(attr, r[f"{attr}_source"])] for r in records]
    return out


def _read_cache(path: Path, fingerprint: str) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # a damaged cache only costs time
        log.warning("ignoring unreadable label cache %s (%s)", path, e)
        return {}
    df = df[df["fingerprint"] == fingerprint]
    return {r["sha1"]: {k: v for k, v in r.items() if k not in ("sha1", "fingerprint")
                        and not (isinstance(v, float) and np.isnan(v)) and v is not None}
            for r in df.to_dict("records")}


def _write_cache(path: Path, entries: dict[str, dict], fingerprint: str) -> None:
    df = pd.DataFrame([{**v, "sha1": k, "fingerprint": fingerprint} for k, v in entries.items()])
    if path.is_file():  # entries of other settings stay: switching back costs nothing
        try:
            old = pd.read_parquet(path)
            df = pd.concat([old[old["fingerprint"] != fingerprint], df], ignore_index=True)
        except Exception:
            pass
    write_table(df, path)


def label_deepface(images: pd.DataFrame, spec: dict, cache_path: Path | None = None, progress: bool = True,
                   labeller: DeepFaceLabeller | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Returns (labelled rows, dropped rows, the labeller's classes, its extra column names)."""
    opts = {**DEEPFACE_DEFAULTS, **{k: v for k, v in spec.items() if k in DEEPFACE_DEFAULTS}}
    if opts["asian_as"] not in ("East Asian", "Southeast Asian"):
        raise VlmbiasError(f"label: asian_as must be 'East Asian' or 'Southeast Asian', got {opts['asian_as']!r}")
    if opts["multiple_faces"] not in ("largest", "first", "drop"):
        raise VlmbiasError(f"label: multiple_faces must be largest, first or drop, got {opts['multiple_faces']!r}")
    lab = labeller or DeepFaceLabeller(opts, max_pixels)
    fp = lab.fingerprint()
    cache_path = Path(opts["cache"]) if opts["cache"] else cache_path
    cache = _read_cache(cache_path, fp) if cache_path else {}
    todo = [s for s in dict.fromkeys(images["sha1"]) if s not in cache]
    log.info("deepface %s (%s engine, detector %s): %d images, %d cached, %d to analyse", lab.version,
             opts["engine"], opts["detector_backend"], images["sha1"].nunique(), images["sha1"].nunique() - len(todo),
             len(todo))
    first_path = images.drop_duplicates("sha1").set_index("sha1")["path"]
    for i, sha1 in enumerate(tqdm(todo, desc="deepface", unit="img", disable=not progress), 1):
        res = lab.analyze(first_path[sha1])
        if res["status"] == "error":
            log.warning("%s: %s", first_path[sha1], res["reason"])
        cache[sha1] = res
        if cache_path and (i % 25 == 0 or i == len(todo)):  # a crash loses at most 25 analyses
            _write_cache(cache_path, {k: v for k, v in cache.items() if v["status"] != "error"}, fp)
    raw = [{**cache[s]} for s in images["sha1"]]
    status = pd.Series([r["status"] for r in raw], index=images.index)
    dropped = images.loc[status != "ok", ["image_id", "path"]].assign(
        reason=[r["reason"] for r in raw if r["status"] != "ok"])
    ok = images.loc[status == "ok"]
    if ok.empty:
        reasons = status.value_counts().to_dict()
        if set(reasons) == {"no-face"}:
            raise VlmbiasError(f"no image had a detectable face ({len(images)} images, detector "
                               f"{opts['detector_backend']!r}); nothing to label")
        first = dropped["reason"].iloc[0] if len(dropped) else ""
        raise VlmbiasError(f"no image could be labelled by deepface ({reasons}); first: {first}")
    raw_ok = pd.DataFrame([r for r in raw if r["status"] == "ok"], index=ok.index).drop(columns=["status", "reason"])
    score_cols = sorted(c for c in raw_ok.columns if "_score_" in c)
    labelled = pd.concat([ok, _map_deepface(raw_ok, opts["asian_as"])], axis=1)
    n_asian = int((labelled["race_source"] == "asian").sum())
    log.info("deepface's single 'asian' class is mapped to %r (%d images); FairFace's other Asian class cannot "
             "occur in these labels", opts["asian_as"], n_asian)
    extra = ["gender_source", "race_source", "age_years", "gender_confidence", "race_confidence", "face_confidence",
             "n_faces", *score_cols]
    labelled["n_faces"] = labelled["n_faces"].astype(int)
    return labelled, dropped, _deepface_classes(opts["asian_as"]), extra


# ------------------------------------------------------------------------------------- label noise

def add_label_noise(labels: pd.DataFrame, error_rate, classes: dict[str, list[str]], seed: int = 0) -> pd.DataFrame:
    """Flip exactly round(rate * n) labels per attribute to another class, chosen at random (seeded).

    Adds `true_<attr>` (the clean label) and `<attr>_flipped`."""
    out = labels.copy()
    rates = error_rate if isinstance(error_rate, dict) else {a: error_rate for a in classes}
    unknown = sorted(set(rates) - set(classes))
    if unknown:
        raise VlmbiasError(f"label: error_rate names unknown attribute(s) {unknown}; expected some of {list(classes)}")
    for attr, allowed in classes.items():
        rate = rates.get(attr, 0.0) or 0.0
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise VlmbiasError(f"label: error_rate for {attr} must be a number in [0, 1], got {rate!r}")
        out[f"true_{attr}"] = out[attr]
        flipped = np.zeros(len(out), bool)
        k = int(round(rate * len(out)))
        if k:
            rng = np.random.default_rng([int(seed), zlib.crc32(attr.encode())])
            idx = rng.choice(len(out), size=k, replace=False)
            values = out[attr].to_numpy(dtype=object).copy()
            for i in idx:
                others = [c for c in allowed if c != values[i]]
                values[i] = others[rng.integers(len(others))]
            out[attr] = values
            flipped[idx] = True
        out[f"{attr}_flipped"] = flipped
    return out


# ----------------------------------------------------------------------------------------------- csv

def label_csv(images: pd.DataFrame, spec: dict):
    from vlmbias.audit.data import check_classes, class_order, read_label_csv

    if not spec.get("csv"):
        raise VlmbiasError("label source 'csv' needs 'csv', the file holding the labels")
    file_col, match = spec.get("file_column", "file"), spec.get("match", "origin")
    if match not in ("origin", "image_id", "sha1"):
        raise VlmbiasError(f"label: match must be origin, image_id or sha1, got {match!r}")
    declared = spec.get("attributes") or ATTRIBUTES
    names = list(declared)
    caption_col = spec.get("caption_column")
    df = read_label_csv(Path(spec["csv"]), [file_col, *names, *([caption_col] if caption_col else [])])
    if isinstance(declared, dict):
        classes = {a: [str(c) for c in cls] for a, cls in declared.items()}
    else:
        classes = {a: FAIRFACE_CLASSES[a] if a in FAIRFACE_CLASSES else class_order(df[a]) for a in names}
    df = df[df[file_col] != ""]
    empty = df[names].eq("").any(axis=1)
    if empty.any():
        log.warning("%s: %d row(s) with an empty label are ignored, e.g. %s", spec["csv"], int(empty.sum()),
                    df.loc[empty, file_col].iloc[0])
        df = df[~empty]
    check_classes(df, classes, str(spec["csv"]))
    key = df[file_col]
    if match == "origin" and spec.get("root"):
        root = Path(spec["root"]).resolve()
        key = key.map(lambda p: p if "://" in p or Path(p).is_absolute() else str((root / p).resolve()))
    if key.duplicated().any():
        raise VlmbiasError(f"{spec['csv']}: file {key[key.duplicated()].iloc[0]!r} is labelled twice")
    table = df.assign(_key=key.to_numpy()).set_index("_key")[names]
    ours = images[match].astype(str)
    if match == "origin":
        ours = ours.map(lambda p: p if "://" in p else str(Path(p).resolve()))
    hit = ours.isin(table.index)
    unused = len(table) - int(table.index.isin(ours).sum())
    if unused:
        # normal when the CSV labels more than was acquired; unlabelled acquired images go to dropped.csv
        log.info("%s: %d labelled file(s) match no acquired image (match: %s)", spec["csv"], unused, match)
    labelled = images.loc[hit].copy()
    for a in names:
        labelled[a] = table.loc[ours[hit], a].to_numpy()
    if caption_col:  # the CSV's caption where it has one, else the keyword's (acquired_images)
        text = df.assign(_key=key.to_numpy()).set_index("_key")[caption_col].loc[ours[hit]].to_numpy()
        labelled["caption"] = np.where(text != "", text, labelled["caption"].to_numpy())
    dropped = images.loc[~hit, ["image_id", "path"]].assign(reason=f"no label in {spec['csv']}")
    extra = []
    if "error_rate" in spec:
        labelled = add_label_noise(labelled, spec["error_rate"], classes, int(spec.get("seed", 0)))
        n_flip = {a: int(labelled[f"{a}_flipped"].sum()) for a in classes}
        log.info("labels with imitated classifier error (error_rate %s): flipped %s of %d", spec["error_rate"],
                 n_flip, len(labelled))
        extra = [c for a in classes for c in (f"true_{a}", f"{a}_flipped")]
    return labelled, dropped, classes, extra


# ------------------------------------------------------------------------------------------- outputs

def distribution_by_keyword(labels: pd.DataFrame, classes: dict[str, list[str]]) -> pd.DataFrame:
    """Counts and percent per keyword x attribute x class, zeros kept, in class order."""
    rows = []
    for (kw, concept), df in labels.groupby(["keyword", "concept"], sort=False, dropna=False):
        for attr, order in classes.items():
            counts = df[attr].value_counts().reindex(order, fill_value=0)
            total = int(counts.sum())
            rows += [{"keyword": kw, "concept": concept, "attribute": attr, "class": c, "count": int(n),
                      "percent": 100.0 * n / total if total else 0.0} for c, n in counts.items()]
    return pd.DataFrame(rows, columns=DISTRIBUTION_COLUMNS)


def _class_order(values: pd.Series, attr: str) -> list[str]:
    seen = set(values.dropna())
    if attr in FAIRFACE_CLASSES and seen <= set(FAIRFACE_CLASSES[attr]):
        return [c for c in FAIRFACE_CLASSES[attr] if c in seen]
    return sorted(seen)


def balanced_set(labels: pd.DataFrame, per: str = "concept", attributes=("gender", "race"),
                 n_per_cell: int | None = None, seed: int = 0, classes: dict[str, list[str]] | None = None,
                 allow_missing: bool = False) -> pd.DataFrame:
    """A fine-tuning set with the same number of images in every attribute cell of every `per` group.

    Cells are the combinations of the attributes' classes (gender x race: 14 with FairFace's classes).
    `classes` fixes each attribute's classes (default: the classes seen anywhere in `labels`, so a class
    that one concept lacks but others have is a missing cell). Every cell of a group is downsampled
    to its smallest cell, or to `n_per_cell` when that is smaller. An empty cell is an error naming the
    group and class, unless `allow_missing`: then the empty cells are skipped (logged) and the others
    balanced. Returns the chosen rows plus a `cell` column ("Female|Black").
    """
    attributes = list(attributes)
    missing_cols = [c for c in [per, *attributes] if c not in labels.columns]
    if missing_cols:
        raise VlmbiasError(f"balanced set: labels lack column(s) {missing_cols}")
    if labels.empty:
        raise VlmbiasError("balanced set: there are no labelled images")
    if n_per_cell is not None and int(n_per_cell) < 1:
        raise VlmbiasError(f"balanced set: n_per_cell must be a positive integer, got {n_per_cell!r}")
    classes = {a: list((classes or {}).get(a) or _class_order(labels[a], a)) for a in attributes}
    cells = list(itertools.product(*(classes[a] for a in attributes)))
    chosen = []
    for group, df in labels.groupby(per, sort=True):
        by_cell: dict[tuple, list] = {}
        for i, key in zip(df.index, zip(*(df[a] for a in attributes))):
            by_cell.setdefault(key, []).append(i)
        empty = [c for c in cells if len(by_cell.get(c, [])) == 0]
        if empty:
            names = ", ".join("/".join(f"{a}={v}" for a, v in zip(attributes, c)) for c in empty[:4])
            more = f" and {len(empty) - 4} more" if len(empty) > 4 else ""
            if not allow_missing:
                raise VlmbiasError(f"balanced set: {per} {group!r} has no image of class {names}{more} "
                                   f"({len(empty)} of {len(cells)} cells empty); add images or set allow_missing: "
                                   "true to skip empty cells")
            log.warning("balanced set: %s %r: skipping %d empty cell(s): %s%s", per, group, len(empty), names, more)
        present = [c for c in cells if c not in empty]
        if not present:
            continue
        n = min(len(by_cell[c]) for c in present)
        if n_per_cell is not None:
            n = min(n, int(n_per_cell))
        for c in present:
            rng = np.random.default_rng([int(seed), zlib.crc32(f"{group}|{'|'.join(map(str, c))}".encode())])
            idx = np.sort(rng.choice(np.asarray(by_cell[c]), size=n, replace=False))
            chosen.append(labels.loc[idx].assign(cell="|".join(map(str, c))))
        log.info("balanced set: %s %r: %d per cell x %d cells", per, group, n, len(present))
    if not chosen:
        raise VlmbiasError("balanced set: every cell of every group is empty")
    return pd.concat(chosen).sort_values([per, "cell", "image_id"], kind="stable").reset_index(drop=True)


def balance_from_spec(labels: pd.DataFrame, spec: dict, classes: dict | None = None) -> pd.DataFrame:
    """`balanced_set` from a config block `{per, attributes, n_per_cell, seed, allow_missing}`
    (label.balanced, or a LoRA method's own `balanced`, e.g. over gender x race)."""
    b = dict(spec or {})
    unknown = sorted(set(b) - {"per", "attributes", "n_per_cell", "seed", "allow_missing"})
    if unknown:
        raise VlmbiasError(f"label: balanced has unknown key(s) {unknown}")
    attrs = b.get("attributes", ["gender", "race"])
    return balanced_set(labels, per=b.get("per", "concept"), attributes=attrs,
                        n_per_cell=b.get("n_per_cell"), seed=int(b.get("seed", 0)),
                        classes={k: v for k, v in (classes or {}).items() if k in attrs} or None,
                        allow_missing=bool(b.get("allow_missing", False)))


# --------------------------------------------------------------------------------------------- stage

def acquired_images(acquired: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The usable images of an acquired manifest, and the ones whose file has gone missing."""
    need = ["image_id", "path", "status", "keyword", "sha1"]
    missing_cols = [c for c in need if c not in acquired.columns]
    if missing_cols:
        raise VlmbiasError(f"acquired manifest lacks column(s) {missing_cols}; is it acquire's output?")
    ok = acquired[acquired["status"] == "ok"].copy()
    if ok.empty:
        raise VlmbiasError("the acquired manifest lists no usable image (status ok); nothing to label")
    for col in ("concept", "caption", "origin"):
        if col not in ok.columns:
            ok[col] = None
    ok["acquire_source"] = ok["source"] if "source" in ok.columns else None
    ok["concept"] = ok["concept"].astype(object).fillna(ok["keyword"])  # object: an all-empty column reads as float
    # a web-search or folder image has no caption of its own: it is captioned by the keyword it was
    # found for, the text the fine-tuning objectives pair it with
    ok["caption"] = ok["caption"].astype(object).fillna(ok["keyword"])
    exists = ok["path"].map(lambda p: isinstance(p, str) and Path(p).is_file())
    gone = ok.loc[~exists, ["image_id", "path"]].assign(reason="image file missing")
    return ok.loc[exists].reset_index(drop=True), gone


def label_images(spec: dict, acquired: pd.DataFrame, cache_path: Path | None = None, progress: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
    """Returns (labels, dropped, classes). `max_pixels`: the image gate's limit for images that are
    decoded here (DeepFace's input; config images.max_pixels)."""
    source = spec.get("source")
    if source not in LABEL_SOURCES:
        raise VlmbiasError(f"label: source {source!r} is not one of {list(LABEL_SOURCES)}")
    known = {"source", "balanced", *SOURCE_KEYS[source]}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise VlmbiasError(f"label: unknown key(s) {unknown} for source {source!r}; known keys: {sorted(known)}")
    images, gone = acquired_images(acquired)
    if images.empty:
        raise VlmbiasError(f"none of the {len(gone)} acquired image files exists; first: {gone['path'].iloc[0]}")
    if source == "deepface":
        labelled, dropped, classes, extra = label_deepface(images, spec, cache_path, progress, max_pixels=max_pixels)
    else:
        labelled, dropped, classes, extra = label_csv(images, spec)
    labelled = labelled.assign(label_source=source)
    cols = [*BASE_COLUMNS, *classes, *CONTEXT_COLUMNS, *[c for c in extra if c in labelled.columns]]
    labels = labelled[cols].sort_values("image_id", kind="stable").reset_index(drop=True)
    dropped = pd.concat([gone, dropped], ignore_index=True)[DROPPED_COLUMNS]
    for row in dropped.head(20).itertuples():
        log.info("dropped %s: %s", row.image_id, row.reason)
    log.info("labelled %d images, dropped %d (%s)", len(labels), len(dropped),
             dropped["reason"].value_counts().head(5).to_dict())
    return labels, dropped, classes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.label", description="Label acquired images.")
    p.add_argument("--spec-json", required=True, help="the label config block as JSON")
    p.add_argument("--acquired", required=True, help="acquire's manifest (acquired.parquet)")
    p.add_argument("--out-labels", required=True)
    p.add_argument("--out-dropped", required=True)
    p.add_argument("--out-distribution", required=True)
    p.add_argument("--out-balanced", help="also draw a balanced fine-tuning set (spec key 'balanced')")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    a = p.parse_args(argv)
    spec = parse_json_arg(a.spec_json, "--spec-json")
    if not Path(a.acquired).is_file():
        raise VlmbiasError(f"acquired manifest not found: {a.acquired}")
    # The cache sits beside the labels but is no declared output, so Snakemake keeps it between runs.
    cache = Path(a.out_labels).parent / ".label-cache.parquet"
    labels, dropped, classes = label_images(spec, read_table(a.acquired), cache, max_pixels=a.max_pixels)
    balanced = None
    if a.out_balanced:
        balanced = balance_from_spec(labels, spec.get("balanced") or {}, classes)
    write_table(dropped, a.out_dropped)
    write_table(distribution_by_keyword(labels, classes), a.out_distribution)
    # image paths are stored relative to the acquired images' folder (docs/artifacts.md)
    root = table_path_root(a.acquired) or common_folder(labels["path"])
    if balanced is not None:
        write_table(balanced, a.out_balanced, path_root=root)
    write_table(labels, a.out_labels, path_root=root)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
