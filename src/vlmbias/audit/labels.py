"""Label files and class names that every dataset reader shares (FairFace's classes, label CSVs).
Below the readers: `data.py` and `published.py` both import it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from vlmbias import VlmbiasError

FAIRFACE_CLASSES: dict[str, list[str]] = {
    "gender": ["Male", "Female"],
    "race": ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian"],
    "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"],
}

# Manifest columns that describe an item but are not attributes (never grouped by): FACET's person
# box, and SocialCounterfactuals' set id, set type and caption (docs/artifacts.md)
NOT_ATTRIBUTES = ("image_id", "path", "crop", "counterfactual_set", "set_type", "caption")


def read_label_csv(csv_path: Path, required: list[str], strip: bool = True) -> pd.DataFrame:
    """A label CSV as strings; `strip=False` keeps the cells as written (for `normalise_labels` to report)."""
    if not csv_path.is_file():
        raise VlmbiasError(f"label file not found: {csv_path}")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=strip)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise VlmbiasError(f"cannot parse {csv_path}: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]  # tolerate ' age, gender' style headers
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise VlmbiasError(f"{csv_path} lacks column(s) {missing}; it has {list(df.columns)}")
    return df.apply(lambda s: s.str.strip()) if strip else df
