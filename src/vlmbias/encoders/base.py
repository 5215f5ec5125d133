"""What every encoder backend and text transform shares: reading features off a model output, and
checking the embedding arrays a transform is given."""
from __future__ import annotations

import numpy as np
import torch

from vlmbias import VlmbiasError


def features(out) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output holds the projected features
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def embedding_array(x, what: str, ndim: int, dim: int | None = None, dtype=np.float32,
                    nonzero: bool = True) -> np.ndarray:
    """`x` as a contiguous array of `ndim` dimensions (the last one `dim`), finite, with no all-zero
    row unless `nonzero` is false; anything else is one sentence naming `what`."""
    try:
        a = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError):
        raise VlmbiasError(f"{what} must be a numeric array") from None
    if a.ndim != ndim:
        raise VlmbiasError(f"{what} must have {ndim} dimensions, got shape {a.shape}")
    if dim is not None and a.shape[-1] != dim:
        raise VlmbiasError(f"{what} has embedding size {a.shape[-1]}, expected {dim}")
    if not np.isfinite(a).all():
        raise VlmbiasError(f"{what} contains NaN or infinite values")
    if nonzero and a.size and (np.linalg.norm(a, axis=-1) < 1e-8).any():
        raise VlmbiasError(f"{what} contains an all-zero embedding")
    return np.ascontiguousarray(a)
