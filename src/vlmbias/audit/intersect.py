"""Derived intersectional attributes (config `datasets.<name>.intersections`): e.g.
`{gender_race: [gender, race]}` adds an attribute `gender_race` whose classes are the
combinations `Male|White`, ..., in the order of the first attribute's classes, then the second's
(zeros kept, like every attribute). An item unlabelled in any component is unlabelled in the
intersection. Metrics, intervals, figures and the zero-shot tables then treat it as any attribute."""
from __future__ import annotations

import itertools

import pandas as pd

from vlmbias import VlmbiasError

SEPARATOR = "|"


def add_intersections(manifest: pd.DataFrame, classes: dict[str, list[str]],
                      intersections: dict[str, list[str]] | None) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """(manifest with one column per intersection, classes with their combined class orders)."""
    if not intersections:
        return manifest, classes
    manifest, classes = manifest.copy(), dict(classes)
    for name, parts in intersections.items():
        if name in classes or name in manifest.columns:
            raise VlmbiasError(f"intersection {name!r}: the dataset already has a column of that name")
        parts = list(parts or [])
        if len(parts) < 2 or len(set(parts)) != len(parts):
            raise VlmbiasError(f"intersection {name!r} needs two or more different attributes, got {parts}")
        unknown = [p for p in parts if p not in classes]
        if unknown:
            raise VlmbiasError(f"intersection {name!r}: attribute(s) {unknown} not in the dataset; "
                               f"it has {list(classes)}")
        bad = [(p, c) for p in parts for c in classes[p] if SEPARATOR in str(c)]
        if bad:
            raise VlmbiasError(f"intersection {name!r}: class {bad[0][1]!r} of {bad[0][0]!r} contains {SEPARATOR!r}")
        cols = [manifest[p].where(manifest[p].notna() & (manifest[p].astype(str).str.strip() != ""))
                for p in parts]
        labelled = pd.concat(cols, axis=1).notna().all(axis=1)
        joined = pd.Series(None, index=manifest.index, dtype=object)
        if labelled.any():
            joined[labelled] = pd.concat(cols, axis=1)[labelled].astype(str).agg(SEPARATOR.join, axis=1)
        manifest[name] = joined
        classes[name] = [SEPARATOR.join(map(str, combo)) for combo in itertools.product(*(classes[p] for p in parts))]
    return manifest, classes
