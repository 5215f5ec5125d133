"""Drawing the world's abstract "people": race is the figure's hue, gender its shape, age the
background's brightness, plus a scene texture, clutter, a concept's evidence glyph and decoys.
Nothing here depicts a person; the FairFace class names only label arbitrary visual signatures."""
from __future__ import annotations

import colorsys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.audit.data import FAIRFACE_CLASSES

CLASSES = FAIRFACE_CLASSES

# Hue of each race's figure: evenly spaced around the colour wheel, in a deliberately arbitrary order
# so that no hue resembles a skin tone ordering.
RACE_HUE_SLOT = {"East Asian": 3, "Indian": 0, "Black": 5, "White": 1, "Middle Eastern": 6,
                 "Latino_Hispanic": 2, "Southeast Asian": 4}
# Background scenes (mean-zero textures). Each concept has a preferred scene it shows in
# `scene_affinity` of its images, the way professions favour settings in real photos; test images get
# scenes at random. Why: it gives test images query-relevant variation that has nothing to do with
# demographics, so a small accidental tilt of a query cannot decide a whole top-k on its own.
SCENES = ["plain", "stripes", "rows", "checker"]
GENDER_SHAPE = {"Male": "tall diamond", "Female": "wide ellipse"}
# Figures other than a person (`figure` of a concept): drawn in a race's hue (the concept's planted
# race) but with a shape no person has, so zero-shot "non-human" labels have a known answer.
FIGURES = ("person", "animal")


def keyed_rng(seed: int, *keys) -> np.random.Generator:
    """A random stream keyed by names, so adding a concept does not reshuffle the others."""
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(k).encode()) for k in keys])


def make_glyphs(concepts: list[str], seed: int, size: int = 5, min_distance: int = 7) -> dict[str, np.ndarray]:
    """A distinct random 5x5 binary pattern per concept (pairwise Hamming distance >= min_distance)."""
    rng = keyed_rng(seed, "glyphs")
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


def make_decoy(glyphs: dict[str, np.ndarray], rng: np.random.Generator, min_distance: int = 6) -> np.ndarray:
    """A random glyph-like pattern at least min_distance bits from every concept's glyph: incidental
    detail that resembles some concepts' evidence a little, never enough to be evidence."""
    shape = next(iter(glyphs.values())).shape
    while True:
        d = rng.random(shape) < 0.5
        if 9 <= d.sum() <= 16 and all((d != g).sum() >= min_distance for g in glyphs.values()):
            return d


def _animal_mask(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """A four-legged silhouette (box body, four legs, a raised head), anti-aliased like the person
    shapes: the union (max) of the parts' coverage."""
    a, b = 1.0 * r, 0.42 * r
    # a box, neither person shape: an elliptical body (like the Female ellipse) cost the world model
    # more of its gender signal (docs/experiments.md, "The non-human figure")
    body = np.maximum(np.abs(dx) - a, np.abs(dy + 0.15 * r) - b)
    parts = [body]
    for x in (-0.8, -0.35, 0.35, 0.8):  # legs: thin bars from the body's middle to below it
        parts.append(np.maximum(np.abs(dx - x * r) - 0.12 * r, np.abs(dy - 0.45 * r) - 0.5 * r))
    parts.append(np.sqrt((dx - 1.15 * r) ** 2 + (dy + 0.7 * r) ** 2) - 0.33 * r)  # head
    return np.max([np.clip(0.5 - d, 0, 1) for d in parts], axis=0)


def render_person(size: int, gender: str | None, race: str, age: str, scene: str, glyph: np.ndarray | None,
                  decoy: np.ndarray | None, noise: float, clutter: float, rng: np.random.Generator,
                  figure: str = "person") -> np.ndarray:
    """One abstract 'person' as uint8 HxWx3. Class -> signature mapping: see module docstring.
    figure="animal" draws the four-legged shape instead (no gender signature; `gender` is ignored)."""
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
    if figure == "animal":
        mask = _animal_mask(dx, dy, r)[..., None]
    elif GENDER_SHAPE[gender] == "wide ellipse":
        a, b = 1.2 * r, 0.58 * r
        dist = (np.sqrt((dx / a) ** 2 + (dy / b) ** 2) - 1) * b
    else:  # tall diamond of about the ellipse's area (2ab = pi*a'b')
        a, b = 0.8 * r, 1.36 * r
        dist = (np.abs(dx) / a + np.abs(dy) / b - 1) * a / np.sqrt(2)
    if figure != "animal":
        mask = np.clip(0.5 - dist, 0, 1)[..., None]  # 1-pixel anti-aliased edge
    hue = (RACE_HUE_SLOT[race] / 7 + 0.04 + rng.normal(0, 0.012)) % 1.0
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


def save_jpeg(arr: np.ndarray, path: Path) -> None:
    # 4:4:4 (no chroma subsampling): at 32 px, subsampling would smear the hue signature.
    Image.fromarray(arr, "RGB").save(path, format="JPEG", quality=95, subsampling=0)


def signatures_table() -> pd.DataFrame:
    rows = [("race", c, f"figure hue {(RACE_HUE_SLOT[c] / 7 + 0.04) % 1:.3f} (+-0.012)") for c in CLASSES["race"]]
    rows += [("gender", c, f"figure shape: {GENDER_SHAPE[c]}") for c in CLASSES["gender"]]
    rows += [("age", c, f"background level {0.15 + 0.08 * i:.2f} (+-0.015)") for i, c in enumerate(CLASSES["age"])]
    return pd.DataFrame(rows, columns=["attribute", "class", "signature"])
