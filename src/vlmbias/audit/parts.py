"""Dataset type `part`: one seeded part of another dataset (docs/datasets.md, docs/data-roles.md).

A `part` entry splits its parent's images into a *reference* part (a share `fraction` of them) and
an *evaluation* part (the rest), stratified by label combination, so that a method can fit on one
part and be audited on the other. Two entries with the same parent, fraction, seed and stratify
and the two `part` values are disjoint and together hold every image of the parent.

The split depends only on the parent's images and labels, never on their row order: rows are
sorted by image id, grouped into strata (one per combination of the `stratify` labels), and each
stratum is ordered by its own seeded permutation. A stratum of n images gives the reference part
floor(fraction * n) or one more, so both parts keep the parent's group mix; the strata that get one
more are those with the largest remainders (ties in seeded random order), so that the reference
part holds round(fraction * N) of the parent's N images.
"""
from __future__ import annotations

import json
import math
import zlib
from fractions import Fraction

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.config import PART_FRACTION, PARTS


def _entropy(seed: int) -> int:
    return int(seed) % 2**64  # a negative seed is a valid seed too


def reference_mask(manifest: pd.DataFrame, fraction: float = PART_FRACTION, seed: int = 0,
                   stratify: list[str] | None = None) -> pd.Series:
    """True for the rows of `manifest` (image_id + label columns) in the reference part, False for
    the evaluation part; indexed like `manifest`. `stratify`: the label columns whose combinations
    are kept in proportion (None: every column but image_id, path and crop; []: none)."""
    if not 0 < float(fraction) < 1:
        raise VlmbiasError(f"part fraction {fraction!r} must lie strictly between 0 and 1")
    if stratify is None:
        stratify = [c for c in manifest.columns if c not in ("image_id", "path", "crop")]
    unknown = [a for a in stratify if a not in manifest.columns]
    if unknown:
        have = [c for c in manifest.columns if c not in ("image_id", "path", "crop")]
        raise VlmbiasError(f"part stratify names {unknown}, which the parent dataset does not label (its "
                           f"attributes: {have})")
    if manifest["image_id"].duplicated().any():
        raise VlmbiasError("the parent dataset lists an image id twice; a part needs unique image ids")
    rows = manifest.sort_values("image_id", kind="stable")
    keys = (rows[stratify].astype(str).agg(lambda r: json.dumps(list(r)), axis=1) if stratify
            else pd.Series("[]", index=rows.index))
    strata = sorted(keys.unique())
    f = Fraction(str(float(fraction)))
    members = {k: rows.index[keys.to_numpy() == k] for k in strata}  # in image-id order
    share = {k: f * len(members[k]) for k in strata}
    counts = {k: math.floor(share[k]) for k in strata}
    extra = math.floor(f * len(rows) + Fraction(1, 2)) - sum(counts.values())
    tie = np.random.default_rng(_entropy(seed)).permutation(len(strata))
    by_remainder = sorted(range(len(strata)), key=lambda i: (-(share[strata[i]] - counts[strata[i]]), tie[i]))
    for i in by_remainder[:extra]:
        counts[strata[i]] += 1
    mask = pd.Series(False, index=manifest.index)
    for k in strata:
        rng = np.random.default_rng([_entropy(seed), zlib.crc32(k.encode("utf-8"))])
        order = rng.permutation(len(members[k]))
        mask.loc[members[k][order[:counts[k]]]] = True
    return mask


def keep_part(manifest: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """The rows of the parent's `manifest` in part `spec['part']` (a resolved `part` spec:
    part, fraction, seed, stratify), in image-id order."""
    part = spec.get("part")
    if part not in PARTS:
        raise VlmbiasError(f"part {part!r} is not one of {list(PARTS)}")
    mask = reference_mask(manifest, spec.get("fraction", PART_FRACTION), spec.get("seed", 0), spec.get("stratify"))
    kept = manifest[mask if part == "reference" else ~mask]
    return kept.sort_values("image_id", kind="stable").reset_index(drop=True)
