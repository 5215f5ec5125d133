"""The calibration world: a synthetic, seeded stand-in for web data + FairFace with a KNOWN planted bias.

No machine of this project can download CLIP weights or FairFace, so the default run builds a small
world in which every bias is planted on purpose and written down (`bias_table.csv`). A small CLIP is
trained on it (`vlmbias.worldmodel`) and the real audit must then find exactly the planted bias, and
none on the control concepts: the project's known-answer test.

Everything here is abstract. A "person" is a coloured shape on a plain background; the FairFace class
names are used only so the audit code runs unchanged:
- race   -> the hue of the central figure (7 arbitrary, evenly spaced hues, in a shuffled order),
- gender -> the figure's shape (a tall diamond or a wide ellipse of about equal area),
- age    -> the background's brightness (9 levels),
each with jitter and pixel noise. A concept (profession) leaves a visual "evidence" mark, a small
concept-specific 5x5 glyph in a random corner, on only `evidence_rate` of its corpus images; when the
mark is missing the only thing a caption co-occurs with is the demographic signature, which is how a
skewed corpus becomes a learned bias.

Layout of a generated world (`generate_world(spec, out_dir)`):
    corpus/<n>.jpg                 web corpus images (train + heldout splits)
    corpus.parquet (+ .csv)        image_id, path (relative to the world), caption, lang, concept,
                                   evidence, split, gender, race, age, names; concept is null for
                                   captions that name a group ("a photo of a woman"), whose `names`
                                   says which ("gender=Female", "gender=Male;race=Black"), and for
                                   the uninformative filler captions ("a photo of someone")
    fairface/val/<n>.jpg           the balanced test split, no evidence marks, FairFace layout
    fairface/fairface_label_val.csv   file, age, gender, race, service_test
    bias_table.csv                 concept, lang, attribute, class, planted (every concept/lang/attribute)
    concepts.csv                   concept, lang, name, family (the names a search or a query may use)
    signatures.csv                 attribute, class, signature (what each class looks like)
    world_spec.json                the resolved spec the world was built from
"""
from __future__ import annotations

import argparse
import colorsys
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections import Counter
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from vlmbias import VlmbiasError
from vlmbias.data import FAIRFACE_CLASSES
from vlmbias.io import run_cli
from vlmbias.queries import caption_key

log = logging.getLogger(__name__)

# FairFace's schema, class names and order exactly, so the audit reads the world like FairFace.
CLASSES = FAIRFACE_CLASSES
ATTRIBUTES = list(CLASSES)
CORPUS_COLUMNS = ["image_id", "path", "caption", "lang", "concept", "evidence", "split", "gender", "race", "age",
                  "names", "scene", "decoy"]
BIAS_COLUMNS = ["concept", "lang", "attribute", "class", "planted"]

# Hue of each race's figure: evenly spaced around the colour wheel, in a deliberately arbitrary order
# so that no hue resembles a skin tone ordering.
_RACE_HUE_SLOT = {"East Asian": 3, "Indian": 0, "Black": 5, "White": 1, "Middle Eastern": 6,
                  "Latino_Hispanic": 2, "Southeast Asian": 4}
# Background scenes (mean-zero textures). Each concept has a preferred scene it shows in
# `scene_affinity` of its images, the way professions favour settings in real photos; test images get
# scenes at random. Why: it gives test images query-relevant variation that has nothing to do with
# demographics, so a small accidental tilt of a query cannot decide a whole top-k on its own.
SCENES = ["plain", "stripes", "rows", "checker"]
_GENDER_SHAPE = {"Male": "tall diamond", "Female": "wide ellipse"}

DEFAULT_TEMPLATES = {
    "en": ["{}", "a photo of {}", "{} at work", "portrait of {}", "a picture showing {}",
           "{} photographed at work", "an image of {}", "stock photo of {}"],
    "zh": ["{}", "{}的照片", "一位{}", "正在工作的{}", "{}的肖像", "一张{}的图片"],
    "ar": ["{}", "صورة {}", "{} في العمل", "صورة شخصية ل{}"],
}

# Words that name a group, per language. The English race names include the thesis' own wording
# ("a East Asian person") next to the grammatical one, as web captions would.
DEFAULT_GROUP_NAMES = {
    "gender": {
        "Male": {"en": ["a man", "a male person"], "zh": ["男人", "男性"]},
        "Female": {"en": ["a woman", "a female person"], "zh": ["女人", "女性"]},
    },
    "race": {
        "East Asian": {"en": ["an East Asian person", "a East Asian person"], "zh": ["东亚人"]},
        "Indian": {"en": ["an Indian person", "a Indian person"], "zh": ["印度人"]},
        "Black": {"en": ["a Black person"], "zh": ["黑人"]},
        "White": {"en": ["a White person"], "zh": ["白人"]},
        "Middle Eastern": {"en": ["a Middle Eastern person"], "zh": ["中东人"]},
        "Latino_Hispanic": {"en": ["a Latino/Hispanic person", "a Latino person", "a Hispanic person"],
                            "zh": ["拉丁裔"]},
        "Southeast Asian": {"en": ["a Southeast Asian person"], "zh": ["东南亚人"]},
    },
    "age": {
        "0-2": {"en": ["a baby"], "zh": ["婴儿"]},
        "3-9": {"en": ["a child"], "zh": ["儿童"]},
        "10-19": {"en": ["a teenager"], "zh": ["青少年"]},
        "20-29": {"en": ["a person in their twenties"], "zh": ["二十多岁的人"]},
        "30-39": {"en": ["a person in their thirties"], "zh": ["三十多岁的人"]},
        "40-49": {"en": ["a person in their forties"], "zh": ["四十多岁的人"]},
        "50-59": {"en": ["a person in their fifties"], "zh": ["五十多岁的人"]},
        "60-69": {"en": ["a person in their sixties"], "zh": ["六十多岁的人"]},
        "more than 70": {"en": ["an elderly person over seventy"], "zh": ["七十多岁的老人"]},
    },
}
# "a Black man": the race word without "person", then the gender noun.
_RACE_ADJ = {"en": {"East Asian": "East Asian", "Indian": "Indian", "Black": "Black", "White": "White",
                    "Middle Eastern": "Middle Eastern", "Latino_Hispanic": "Latino/Hispanic",
                    "Southeast Asian": "Southeast Asian"},
             "zh": {"East Asian": "东亚", "Indian": "印度", "Black": "黑人", "White": "白人",
                    "Middle Eastern": "中东", "Latino_Hispanic": "拉丁裔", "Southeast Asian": "东南亚"}}
_GENDER_NOUN = {"en": {"Male": "man", "Female": "woman"}, "zh": {"Male": "男性", "Female": "女性"}}
# Nouns of the balancing filler's uninformative captions ("a photo of someone"), words no concept or
# group name uses. They go through the same templates as every other caption: template words
# ("a photo of") then co-occur with a balanced corpus. Without that they soaked up the average
# concept skew (mostly Male), and a bare query ("an accountant") came out with the opposite lean.
FILLER_NAMES = {"en": ["someone", "somebody", "a subject"], "zh": ["无名者", "某位"], "ar": ["شخص ما"]}

# Every key the `world` block may hold (the JSON schema mirrors this), with its default.
DEFAULTS: dict = {
    "seed": 0,
    "image_size": 32,
    "evidence_rate": 0.4,
    "noise": 0.04,
    "clutter": 1.0,
    "decoy_rate": 0.5,
    "scene_affinity": 0.5,
    "images_per_concept": 150,
    "heldout_fraction": 0.1,
    "group_images": 1400,
    "group_mix": {"gender": 0.3, "race": 0.4, "gender_race": 0.2, "age": 0.1},
    "group_languages": ["en", "zh"],
    "balance_marginals": True,
    "test_per_cell": 50,
    "base": {},
    "templates": DEFAULT_TEMPLATES,
    "concepts": None,
    "model": {},
}


# ---------------------------------------------------------------------------------------------- spec

def _rng(seed: int, *keys) -> np.random.Generator:
    """A random stream keyed by names, so adding a concept does not reshuffle the others."""
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(k).encode()) for k in keys])


def _distribution(attr: str, given, where: str) -> dict[str, float]:
    """`uniform` / None -> uniform; a partial {class: p} -> the rest spread evenly over the other classes."""
    classes = CLASSES[attr]
    if given in (None, "uniform"):
        return {c: 1.0 / len(classes) for c in classes}
    if not isinstance(given, dict):
        raise VlmbiasError(f"{where}: {attr} must be 'uniform' or a mapping class -> proportion, got {given!r}")
    bad = [c for c in given if c not in classes]
    if bad:
        raise VlmbiasError(f"{where}: unknown {attr} class(es) {bad}; expected some of {classes}")
    if any(not 0 <= float(p) <= 1 for p in given.values()):
        raise VlmbiasError(f"{where}: {attr} proportions must lie in [0, 1]: {given}")
    total = sum(float(p) for p in given.values())
    rest = [c for c in classes if c not in given]
    if total > 1 + 1e-9 or (not rest and abs(total - 1) > 1e-6):
        raise VlmbiasError(f"{where}: {attr} proportions sum to {total:g}; they must sum to <= 1 (= 1 when "
                           "every class is listed)")
    out = {c: float(given.get(c, 0.0)) for c in classes}
    for c in rest:
        out[c] = (1.0 - total) / len(rest)
    return out


def _planted(base: dict, override: dict | None, where: str) -> dict[str, dict[str, float]]:
    """Planted distribution: the base for every attribute, replaced where the concept plants one.
    A partial plant ({Male: 0.8}) spreads the remainder over the other classes in base proportions."""
    out = {a: dict(d) for a, d in base.items()}
    for attr, given in (override or {}).items():
        if attr not in CLASSES:
            raise VlmbiasError(f"{where}: unknown attribute {attr!r}; expected one of {ATTRIBUTES}")
        if given in (None, "uniform"):
            out[attr] = _distribution(attr, given, where)
            continue
        _distribution(attr, given, where)  # validates
        total = sum(float(p) for p in given.values())
        rest = [c for c in CLASSES[attr] if c not in given]
        base_rest = sum(base[attr][c] for c in rest)
        out[attr] = {c: float(given[c]) if c in given else
                     (1 - total) * (base[attr][c] / base_rest if base_rest > 0 else 1 / len(rest))
                     for c in CLASSES[attr]}
    return out


def resolve_spec(spec: dict) -> dict:
    """Fill defaults, validate, and compute every (concept, lang) planted distribution."""
    spec = deepcopy(spec or {})
    if "world" in spec and isinstance(spec["world"], dict):  # accept the whole config file too
        spec = spec["world"]
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise VlmbiasError(f"world spec: unknown key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    out = {**deepcopy(DEFAULTS), **spec}
    out["templates"] = {**DEFAULT_TEMPLATES, **(spec.get("templates") or {})}
    if not out["concepts"]:
        raise VlmbiasError("world spec: 'concepts' is empty; the world needs at least one concept")
    if not 8 <= int(out["image_size"]) <= 512:
        raise VlmbiasError(f"world spec: image_size {out['image_size']} outside 8..512")
    if not 0 <= float(out["evidence_rate"]) <= 1:
        raise VlmbiasError(f"world spec: evidence_rate {out['evidence_rate']} outside [0, 1]")
    if not 0 <= float(out["heldout_fraction"]) < 1:
        raise VlmbiasError(f"world spec: heldout_fraction {out['heldout_fraction']} outside [0, 1)")
    bad = sorted(set(out["base"]) - set(CLASSES))
    if bad:
        raise VlmbiasError(f"world spec: base has unknown attribute(s) {bad}")
    base = {a: _distribution(a, out["base"].get(a), f"base.{a}") for a in ATTRIBUTES}
    out["base_resolved"] = base
    mix = out["group_mix"]
    if set(mix) - {"gender", "race", "gender_race", "age"} or any(float(v) < 0 for v in mix.values()):
        raise VlmbiasError(f"world spec: group_mix keys must be gender, race, gender_race, age (>= 0): {mix}")
    for lang in out["group_languages"]:
        if lang not in _GENDER_NOUN:
            raise VlmbiasError(f"world spec: no group names for language {lang!r}; have {sorted(_GENDER_NOUN)}")
    table = {}
    for concept, c in out["concepts"].items():
        where = f"concepts.{concept}"
        if not isinstance(c, dict) or not c.get("names"):
            raise VlmbiasError(f"{where}: needs 'names' ({{lang: name or [names]}})")
        extra = sorted(set(c) - {"names", "planted", "by_lang", "family", "images"})
        if extra:
            raise VlmbiasError(f"{where}: unknown key(s) {extra}")
        for lang in c["names"]:
            if lang not in out["templates"]:
                raise VlmbiasError(f"{where}: no caption templates for language {lang!r}")
        bad = sorted(set(c.get("by_lang") or {}) - set(c["names"]))
        if bad:
            raise VlmbiasError(f"{where}: by_lang names language(s) {bad} that have no names")
        common = _planted(base, c.get("planted"), where)
        for lang in c["names"]:
            table[(concept, lang)] = _planted(common, (c.get("by_lang") or {}).get(lang), f"{where}.by_lang.{lang}")
    out["planted_resolved"] = {f"{k[0]}|{k[1]}": v for k, v in table.items()}
    out["scene_resolved"] = _assign_scenes(out, base)
    return out


def _assign_scenes(spec: dict, base: dict) -> dict[str, str]:
    """Each concept's preferred scene, chosen greedily so that every scene's concepts together stay
    close to the base demographics (strongest skews first, each to the scene whose summed skew it
    offsets best; ties to the scene with fewer concepts). The filler then balances the remainder."""
    vec = {}
    for concept, c in spec["concepts"].items():
        v = np.zeros(sum(len(CLASSES[a]) for a in ("gender", "race")))
        for lang in c["names"]:
            planted = spec["planted_resolved"][f"{concept}|{lang}"]
            n = int((c.get("images") or {}).get(lang, spec["images_per_concept"]))
            v += n * np.array([planted[a][k] - base[a][k] for a in ("gender", "race") for k in CLASSES[a]])
        vec[concept] = v
    load = {sc: np.zeros_like(next(iter(vec.values()))) for sc in SCENES}
    count = dict.fromkeys(SCENES, 0)
    out = {}
    for concept in sorted(vec, key=lambda k: (-np.abs(vec[k]).sum(), list(vec).index(k))):
        best = min(SCENES, key=lambda sc: (round(float(np.square(load[sc] + vec[concept]).sum()
                                                      - np.square(load[sc]).sum()), 6), count[sc]))
        load[best] += vec[concept]
        count[best] += 1
        out[concept] = best
    return out


def _names(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# ------------------------------------------------------------------------------------------- sampling

def _quota_counts(dist: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Counts summing to n that match `dist` (largest remainder; ties broken at random, so equal
    remainders do not always favour the first classes)."""
    exact = np.array([float(p) * n for p in dist.values()])
    counts = np.floor(exact + 1e-9).astype(int)
    order = np.lexsort((rng.random(len(exact)), -(exact - counts)))
    counts[order[: n - counts.sum()]] += 1
    return counts


def _quota(dist: dict, n: int, rng: np.random.Generator) -> list:
    """Exactly n labels whose counts match `dist`, in random order.
    Quotas rather than independent draws: the realised corpus then *is* the bias table (up to
    rounding), so a calibration error cannot hide in sampling noise."""
    labels = np.repeat(np.array(list(dist), dtype=object), _quota_counts(dist, n, rng))
    return list(rng.permutation(labels))


def _table_counts(rows: dict, cols: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """A rows x cols count table for independent attributes whose row sums and column sums are both the
    exact quotas (controlled rounding), so neither marginal drifts from the plan by rounding cells."""
    r, c = _quota_counts(rows, n, rng), _quota_counts(cols, n, rng)
    expected = np.outer(r, c) / max(n, 1)
    table = np.floor(expected + 1e-9).astype(int)
    frac = expected - table
    need_r, need_c = r - table.sum(1), c - table.sum(0)
    # cells with the largest fractional part first (random among ties), while both margins need one
    order = np.lexsort((rng.random(frac.size), -frac.ravel()))
    for rounds in range(2):  # second round: any cell, in case the greedy pass got stuck
        for k in order:
            i, j = divmod(int(k), table.shape[1])
            if need_r[i] > 0 and need_c[j] > 0 and (rounds or frac[i, j] > 1e-9):
                table[i, j] += 1
                need_r[i] -= 1
                need_c[j] -= 1
    assert not need_r.any() and not need_c.any()
    return table


def _spread(dist: dict, n: int, rng: np.random.Generator) -> list:
    """Exactly n labels matching `dist`, in a low-discrepancy order: every contiguous run holds the
    classes in about their proportions, so cutting the sequence into groups balances each group."""
    keys = []
    for c, k in zip(dist, _quota_counts(dist, n, rng)):
        off = rng.random()
        keys += [((j + off) / k, rng.random(), c) for j in range(k)]
    keys.sort(key=lambda t: t[:2])
    return [c for _, _, c in keys]


def _people(dists: dict[str, dict], n: int, rng: np.random.Generator, cells: dict | None = None,
            cell_attrs: tuple = ("gender", "race"), **spread: dict) -> list[dict]:
    """n people whose gender x race cells match the product of the marginals exactly (or the given
    cell distribution), with age and every extra label (evidence, lang) spread evenly within cells.
    Why joint, not per-attribute quotas: a model can fit whatever gender x race (x evidence) cell
    happens to be over-filled by chance in a concept's few images, and top-k retrieval then
    amplifies that accident into a 'bias' the table never planted."""
    if cells is None:
        cells = {(g, r): dists["gender"][g] * dists["race"][r] for g in CLASSES["gender"] for r in CLASSES["race"]}
        counts = _table_counts(dists["gender"], dists["race"], n, rng).ravel()
    else:
        counts = _quota_counts(cells, n, rng)
    order = rng.permutation(len(cells))  # cells in random order, each one contiguous
    keys = list(cells)
    members = [keys[i] for i in order for _ in range(counts[i])]
    extra = {"age": dists["age"], **spread}
    seqs = {k: _spread(d, n, rng) for k, d in extra.items()}
    people = [{**dict(zip(cell_attrs, key)), **{k: seqs[k][i] for k in seqs}} for i, key in enumerate(members)]
    return [people[i] for i in rng.permutation(n)]


def _glyphs(concepts: list[str], seed: int, size: int = 5, min_distance: int = 7) -> dict[str, np.ndarray]:
    """A distinct random 5x5 binary pattern per concept (pairwise Hamming distance >= min_distance)."""
    rng = _rng(seed, "glyphs")
    out: dict[str, np.ndarray] = {}
    for concept in sorted(concepts):
        for _ in range(10_000):
            g = rng.random((size, size)) < 0.5
            if 9 <= g.sum() <= 16 and all((g != h).sum() >= min_distance for h in out.values()):
                break
        else:  # pragma: no cover - only with hundreds of concepts
            raise VlmbiasError("cannot find distinct evidence glyphs; too many concepts")
        out[concept] = g
    return out


# ------------------------------------------------------------------------------------------ rendering

def _decoy(glyphs: dict[str, np.ndarray], rng: np.random.Generator, min_distance: int = 6) -> np.ndarray:
    """A random glyph-like pattern at least min_distance bits from every concept's glyph: incidental
    detail that resembles some concepts' evidence a little, never enough to be evidence."""
    shape = next(iter(glyphs.values())).shape
    while True:
        d = rng.random(shape) < 0.5
        if 9 <= d.sum() <= 16 and all((d != g).sum() >= min_distance for g in glyphs.values()):
            return d


def _render(size: int, gender: str, race: str, age: str, scene: str, glyph: np.ndarray | None,
            decoy: np.ndarray | None, noise: float, clutter: float, rng: np.random.Generator) -> np.ndarray:
    """One abstract 'person' as uint8 HxWx3. Class -> signature mapping: see module docstring."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    level = 0.15 + 0.08 * CLASSES["age"].index(age) + rng.normal(0, 0.015)
    img = np.full((size, size, 3), level, np.float32)
    px, py = xx + rng.integers(0, 8), yy + rng.integers(0, 8)  # random phase of the texture
    texture = {"plain": np.zeros_like(xx), "stripes": np.where((px // 2) % 2 == 0, 1.0, -1.0),
               "rows": np.where((py // 2) % 2 == 0, 1.0, -1.0),
               "checker": np.where(((px // 4) + (py // 4)) % 2 == 0, 1.0, -1.0)}[scene]
    # only in a border band, away from the figure, so the scene is not entangled with the shape
    band = max(2, size // 8)
    border = (np.minimum(np.minimum(xx, yy), np.minimum(s - xx, s - yy)) < band).astype(np.float32)
    img += (0.08 * texture * border)[..., None].astype(np.float32)
    img += (rng.normal(0, 0.02, 3)).astype(np.float32)  # slight colour cast of the background
    for _ in range(rng.poisson(clutter)):  # low-contrast distractor patches
        w, h = rng.integers(2, max(3, size // 8) + 1, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        img[y0:y0 + h, x0:x0 + w] += rng.normal(0, 0.12)
    cx, cy = s / 2 + rng.normal(0, s * 0.05, 2)
    r = s * 0.27 * rng.uniform(0.88, 1.12)
    dx, dy = xx - cx, yy - cy
    if _GENDER_SHAPE[gender] == "wide ellipse":
        a, b = 1.2 * r, 0.58 * r
        dist = (np.sqrt((dx / a) ** 2 + (dy / b) ** 2) - 1) * b
    else:  # tall diamond of about the ellipse's area (2ab = pi*a'b')
        a, b = 0.8 * r, 1.36 * r
        dist = (np.abs(dx) / a + np.abs(dy) / b - 1) * a / np.sqrt(2)
    mask = np.clip(0.5 - dist, 0, 1)[..., None]  # 1-pixel anti-aliased edge
    hue = (_RACE_HUE_SLOT[race] / 7 + 0.04 + rng.normal(0, 0.012)) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.85), rng.uniform(0.65, 0.92)), np.float32)
    img = img * (1 - mask) + rgb * mask
    corners = list(rng.permutation(4))
    ink = 0.95 if level < 0.5 else 0.05  # contrast with the background
    for mark in (glyph, decoy):
        if mark is None:
            continue
        g, corner = mark.shape[0], corners.pop()
        x0 = 1 if corner % 2 == 0 else size - 1 - g
        y0 = 1 if corner < 2 else size - 1 - g
        img[y0:y0 + g, x0:x0 + g][mark] = ink
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _save_jpeg(arr: np.ndarray, path: Path) -> None:
    # 4:4:4 (no chroma subsampling): at 32 px, subsampling would smear the hue signature.
    Image.fromarray(arr, "RGB").save(path, format="JPEG", quality=95, subsampling=0)


def signatures_table() -> pd.DataFrame:
    rows = [("race", c, f"figure hue {(_RACE_HUE_SLOT[c] / 7 + 0.04) % 1:.3f} (+-0.012)") for c in CLASSES["race"]]
    rows += [("gender", c, f"figure shape: {_GENDER_SHAPE[c]}") for c in CLASSES["gender"]]
    rows += [("age", c, f"background level {0.15 + 0.08 * i:.2f} (+-0.015)") for i, c in enumerate(CLASSES["age"])]
    return pd.DataFrame(rows, columns=["attribute", "class", "signature"])


# ------------------------------------------------------------------------------------------- corpus

def _scene_dist(spec: dict, concept: str | None) -> dict[str, float]:
    """A concept's scenes: its preferred one with scene_affinity, the others share the rest."""
    if concept is None:
        return {sc: 1 / len(SCENES) for sc in SCENES}
    pref = spec["scene_resolved"][concept]
    aff = float(spec["scene_affinity"])
    return {sc: aff if sc == pref else (1 - aff) / (len(SCENES) - 1) for sc in SCENES}


def _decoy_dist(spec: dict) -> dict[bool, float]:
    return {True: float(spec["decoy_rate"]), False: 1 - float(spec["decoy_rate"])}


def _concept_rows(spec: dict) -> list[dict]:
    rows = []
    seed = int(spec["seed"])
    for concept, c in spec["concepts"].items():
        for lang, names in c["names"].items():
            n_total = int((c.get("images") or {}).get(lang, spec["images_per_concept"]))
            n_held = int(round(spec["heldout_fraction"] * n_total))
            planted = spec["planted_resolved"][f"{concept}|{lang}"]
            for split, n in (("train", n_total - n_held), ("heldout", n_held)):
                rng = _rng(seed, "concept", concept, lang, split)
                # quotas per split, so the heldout split carries the planted skew too; evidence is
                # spread within each cell, so the evidence-free images carry it as well
                rate = float(spec["evidence_rate"])
                people = _people(planted, n, rng, evidence={True: rate, False: 1 - rate},
                                 scene=_scene_dist(spec, concept), decoy=_decoy_dist(spec))
                templates = spec["templates"][lang]
                for p in people:
                    name = _names(names)[rng.integers(len(_names(names)))]
                    caption = templates[rng.integers(len(templates))].format(name)
                    rows.append({"caption": caption, "lang": lang, "concept": concept,
                                 "evidence": bool(p["evidence"]), "split": split,
                                 **{a: p[a] for a in ATTRIBUTES}, "scene": p["scene"], "decoy": bool(p["decoy"])})
    return rows


def _group_rows(spec: dict) -> list[dict]:
    """Captions that name a group: they teach the model which signature a group word means."""
    seed = int(spec["seed"])
    base = spec["base_resolved"]
    mix = {k: float(v) for k, v in spec["group_mix"].items() if float(v) > 0}
    total = sum(mix.values())
    langs = spec["group_languages"]
    rows = []
    if not mix or not langs or spec["group_images"] <= 0:
        return rows
    counts = {k: int(round(spec["group_images"] * v / total)) for k, v in mix.items()}
    for kind, n_kind in counts.items():
        for split, n in (("train", n_kind - int(round(spec["heldout_fraction"] * n_kind))),
                         ("heldout", int(round(spec["heldout_fraction"] * n_kind)))):
            rng = _rng(seed, "group", kind, split)
            # the named attribute(s) are balanced over their classes, whatever the base says
            named = ["gender", "race"] if kind == "gender_race" else [kind]
            dists = {a: _distribution(a, "uniform", "") if a in named else base[a] for a in ATTRIBUTES}
            people = _people(dists, n, rng, lang={lang: 1 / len(langs) for lang in langs},
                             scene=_scene_dist(spec, None), decoy=_decoy_dist(spec))
            for p in people:
                lang, g, r, a = p["lang"], p["gender"], p["race"], p["age"]
                if kind == "gender_race":
                    adj, noun = _RACE_ADJ[lang][r], _GENDER_NOUN[lang][g]
                    name = f"{'an' if adj[0] in 'AEIOU' else 'a'} {adj} {noun}" if lang == "en" else adj + noun
                    named = f"gender={g};race={r}"
                else:
                    cls = {"gender": g, "race": r, "age": a}[kind]
                    options = DEFAULT_GROUP_NAMES[kind][cls][lang]
                    name = options[rng.integers(len(options))]
                    named = f"{kind}={cls}"
                templates = spec["templates"][lang]
                caption = templates[rng.integers(len(templates))].format(name)
                rows.append({"caption": caption, "lang": lang, "concept": None, "evidence": False,
                             "split": split, "gender": g, "race": r, "age": a, "names": named,
                             "scene": p["scene"], "decoy": bool(p["decoy"])})
    return rows


def _filler_rows(spec: dict, rows: list[dict]) -> list[dict]:
    """Images with uninformative captions ("a photo of someone") whose demographics bring the corpus back to the
    base distribution.

    Why: a contrastive model learns roughly the pointwise mutual information log P(x|caption)/P(x),
    so a concept is measured against the corpus' *overall* demographics, not against the base. If the
    planted skews leave the corpus 57% Male, a 50/50 control comes out female-leaning. With the
    corpus balanced, the known answer is simply planted-vs-base. Balanced per split, per
    gender x race x scene cell and per age class: scenes are shared by several concepts, so a control
    would otherwise inherit the skew of its scene-mates. Tried and dropped: balancing only the
    evidence-free images (controls then lean away from what the evidence images over-represent: an
    image with another concept's glyph still competes for a query), and balancing each language on
    its own (twice the filler, no measurable gain)."""
    base = spec["base_resolved"]
    langs = [lang for lang in spec["group_languages"] if any(r["lang"] == lang for r in rows)]
    gr = {(g, r): base["gender"][g] * base["race"][r] for g in CLASSES["gender"] for r in CLASSES["race"]}
    grs = {(g, r, sc): p / len(SCENES) for (g, r), p in gr.items() for sc in SCENES}
    out = []

    def top_up(part: list[dict], shares: dict, attrs: tuple, key: str, with_age: bool, **spread) -> list[dict]:
        """Filler for `part`: the fewest images that make every cell (and age class) its base share."""
        n = len(part)
        have = Counter(tuple(r[a] for a in attrs) for r in part)
        ages = Counter(r["age"] for r in part)
        # smallest total T with share * T >= count for every cell (and age class)
        total = max([have[c] / p for c, p in shares.items() if p > 0]
                    + ([ages[a] / p for a, p in base["age"].items() if p > 0] if with_age else [0]))
        f = int(np.ceil(total - n - 1e-9)) if n else 0
        if f <= 0:
            return []

        def deficit(sh: dict, got: Counter) -> dict:
            d = {k: max(0.0, p * (n + f) - got[k]) for k, p in sh.items()}
            return {k: v / sum(d.values()) for k, v in d.items()}

        rng = _rng(int(spec["seed"]), "filler", key)
        people = _people({"age": deficit(base["age"], ages) if with_age else base["age"]}, f, rng,
                         cells=deficit(shares, have), cell_attrs=attrs, decoy=_decoy_dist(spec), **spread)
        filled = []
        for p in people:
            lang = p.pop("lang")
            names = FILLER_NAMES.get(lang, FILLER_NAMES["en"])
            templates = spec["templates"][lang]
            caption = templates[rng.integers(len(templates))].format(names[rng.integers(len(names))])
            filled.append({"caption": caption, "lang": lang, "concept": None,
                           "evidence": False, **p, "decoy": bool(p["decoy"])})
        return filled

    for split in ("train", "heldout"):
        part = [r for r in rows if r["split"] == split]
        added = top_up(part, grs, ("gender", "race", "scene"), split, True,
                       lang={lang: 1 / len(langs) for lang in langs or ["en"]})
        out += [{**r, "split": split} for r in added]
    return out


def bias_table(spec: dict) -> pd.DataFrame:
    rows = []
    for key, planted in spec["planted_resolved"].items():
        concept, lang = key.split("|")
        for attr in ATTRIBUTES:
            for cls in CLASSES[attr]:
                rows.append({"concept": concept, "lang": lang, "attribute": attr, "class": cls,
                             "planted": round(planted[attr][cls], 6)})
    return pd.DataFrame(rows, columns=BIAS_COLUMNS)


def concepts_table(spec: dict) -> pd.DataFrame:
    rows = [{"concept": concept, "lang": lang, "name": name, "family": c.get("family", "")}
            for concept, c in spec["concepts"].items() for lang, names in c["names"].items() for name in _names(names)]
    return pd.DataFrame(rows, columns=["concept", "lang", "name", "family"])


def _test_rows(spec: dict) -> pd.DataFrame:
    """Balanced test split: equal counts per gender x race cell, ages spread evenly within each cell."""
    rng = _rng(int(spec["seed"]), "test")
    per_cell = int(spec["test_per_cell"])
    rows = []
    for g in CLASSES["gender"]:
        for r in CLASSES["race"]:
            ages = _spread(spec["base_resolved"]["age"], per_cell, rng)
            scenes = _spread(_scene_dist(spec, None), per_cell, rng)
            decoys = _spread(_decoy_dist(spec), per_cell, rng)
            for i in range(per_cell):
                # service_test: FairFace's flag for its balanced service-test subset; here half of each cell
                rows.append({"age": ages[i], "gender": g, "race": r, "service_test": i < per_cell // 2,
                             "scene": scenes[i], "decoy": bool(decoys[i])})
    df = pd.DataFrame(rows).iloc[rng.permutation(len(rows))].reset_index(drop=True)
    df.insert(0, "file", [f"val/{i + 1}.jpg" for i in range(len(df))])
    return df


# ------------------------------------------------------------------------------------------- public API

def generate_world(spec: dict, out_dir: str | os.PathLike) -> None:
    """Write a complete world to out_dir (built in a temporary sibling, then renamed into place)."""
    spec = resolve_spec(spec)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_world(spec, tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_world(spec: dict, root: Path) -> None:
    seed, size = int(spec["seed"]), int(spec["image_size"])
    glyphs = _glyphs(list(spec["concepts"]), seed)
    rows = _concept_rows(spec) + _group_rows(spec)
    if spec["balance_marginals"]:
        rows += _filler_rows(spec, rows)
    corpus = pd.DataFrame(rows)
    # one global shuffle so ids carry no information about concept or split
    corpus = corpus.iloc[_rng(seed, "corpus-order").permutation(len(corpus))].reset_index(drop=True)
    corpus["names"] = corpus["names"] if "names" in corpus else None
    corpus["image_id"] = [f"c{i:06d}" for i in range(len(corpus))]
    corpus["path"] = [f"corpus/{i:06d}.jpg" for i in range(len(corpus))]
    (root / "corpus").mkdir()
    for row in tqdm(corpus.itertuples(), total=len(corpus), desc="render corpus", unit="img", mininterval=2):
        rng = _rng(seed, "img", row.image_id)
        glyph = glyphs[row.concept] if row.evidence else None
        decoy = _decoy(glyphs, rng) if row.decoy else None
        _save_jpeg(_render(size, row.gender, row.race, row.age, row.scene, glyph, decoy, spec["noise"],
                           spec["clutter"], rng),
                   root / row.path)
    corpus = corpus[CORPUS_COLUMNS]
    corpus.to_parquet(root / "corpus.parquet", index=False)
    corpus.to_csv(root / "corpus.csv", index=False)

    test = _test_rows(spec)
    (root / "fairface" / "val").mkdir(parents=True)
    for row in tqdm(test.itertuples(), total=len(test), desc="render test", unit="img", mininterval=2):
        rng = _rng(seed, "test-img", row.file)
        decoy = _decoy(glyphs, rng) if row.decoy else None
        _save_jpeg(_render(size, row.gender, row.race, row.age, row.scene, None, decoy, spec["noise"],
                           spec["clutter"], rng),
                   root / "fairface" / row.file)
    test[["file", "scene", "decoy"]].to_csv(root / "test_details.csv", index=False)
    test[["file", "age", "gender", "race", "service_test"]].to_csv(root / "fairface" / "fairface_label_val.csv",
                                                                   index=False)
    bias_table(spec).to_csv(root / "bias_table.csv", index=False)
    concepts_table(spec).to_csv(root / "concepts.csv", index=False)
    signatures_table().to_csv(root / "signatures.csv", index=False)
    (root / "world_spec.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                                          encoding="utf-8")
    log.info("world: %d corpus images (%d train), %d test images, %d concept/lang pairs", len(corpus),
             int((corpus["split"] == "train").sum()), len(test), len(spec["planted_resolved"]))


def load_bias_table(world_dir: str | os.PathLike) -> pd.DataFrame:
    path = Path(world_dir) / "bias_table.csv"
    if not path.is_file():
        raise VlmbiasError(f"no bias table at {path}; is {world_dir} a generated world?")
    return pd.read_csv(path, dtype={"concept": str, "lang": str, "attribute": str, "class": str},
                       keep_default_na=False)


def load_corpus(world_dir: str | os.PathLike) -> pd.DataFrame:
    """The corpus with absolute image paths."""
    world_dir = Path(world_dir).resolve()
    path = world_dir / "corpus.parquet"
    if not path.is_file():
        raise VlmbiasError(f"no corpus at {path}; is {world_dir} a generated world?")
    df = pd.read_parquet(path)
    df["path"] = [str(world_dir / p) for p in df["path"]]
    return df


def search(world_dir: str | os.PathLike, keyword: str, limit: int, seed: int = 0,
           lang: str | None = None) -> pd.DataFrame:
    """Search-engine stand-in: corpus images of the concept the keyword names, in any language.

    The keyword may be a concept key ("doctor") or any of its names in any language ("a doctor",
    "医生"); articles are ignored. Results come from the language(s) whose name matched (a concept
    key matches English), as a web search in that language would, unless `lang` is given. The
    order is a seeded random permutation of all matching images, so any prefix keeps the corpus'
    skew in expectation. Returns the corpus columns (absolute `path`) plus a 1-based `rank`.
    """
    world_dir = Path(world_dir)
    names = pd.read_csv(world_dir / "concepts.csv", dtype=str, keep_default_na=False)
    key = caption_key(keyword)
    hits = names[names["name"].map(caption_key) == key][["concept", "lang"]]
    by_key = names[(names["concept"].map(caption_key) == key) & (names["lang"] == "en")][["concept", "lang"]]
    hits = pd.concat([hits, by_key]).drop_duplicates()
    if lang is not None:
        hits = names[names["concept"].isin(hits["concept"]) & (names["lang"] == lang)][["concept", "lang"]]
        hits = hits.drop_duplicates()
    if hits.empty:
        known = sorted(set(names["name"]))
        raise VlmbiasError(f"search: no concept matches {keyword!r}" + (f" in language {lang!r}" if lang else "")
                           + f"; known names: {known[:20]}{' ...' if len(known) > 20 else ''}")
    corpus = load_corpus(world_dir)
    pairs = set(map(tuple, hits.to_numpy()))
    match = corpus[[(c, l) in pairs for c, l in zip(corpus["concept"], corpus["lang"])]]
    order = _rng(seed, "search", key, lang or "").permutation(len(match))
    out = match.iloc[order[: max(0, int(limit))]].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def _load_spec_file(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise VlmbiasError(f"{path}: expected a mapping")
    return data.get("world", data)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.world", description="Generate the calibration world.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a world directory")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec-json", help="the `world` config block as JSON")
    src.add_argument("--spec", help="a YAML file holding a `world:` block (or the block itself)")
    g.add_argument("--out", required=True)
    s = sub.add_parser("search", help="print search-engine stand-in results")
    s.add_argument("--world", required=True)
    s.add_argument("keyword")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.cmd == "generate":
        if a.spec_json:
            from vlmbias.io import parse_json_arg
            spec = parse_json_arg(a.spec_json, "--spec-json")
        else:
            spec = _load_spec_file(a.spec)
        generate_world(spec, a.out)
    else:
        print(search(a.world, a.keyword, a.limit, a.seed).to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
