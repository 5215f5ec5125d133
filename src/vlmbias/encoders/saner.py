"""A trained SANER layer (Hirota et al., ICLR 2025) as a text-embedding transform.

The mitigation stage (`mitigate/saner.py`) trains a residual MLP on the frozen text embedding,
f(x) = x + W2 gelu(W1 x + b1) + b2 (the identity at initialisation), and writes it to a folder:
`WEIGHTS` (the layer's weights) and `META` (dim, hidden, groups, spec; written last).
`load_saner(folder)` returns it as a callable [Q, d] -> [Q, d] float32 unit rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlmbias import VlmbiasError
from vlmbias.encoders.base import embedding_array

WEIGHTS, META = "saner.safetensors", "saner.json"



class SanerLayer(torch.nn.Module):
    """x + W2 gelu(W1 x + b1) + b2, the identity at initialisation."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)
        torch.nn.init.zeros_(self.fc2.weight)
        torch.nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


class SanerTransform:
    """The trained layer as a text-embedding transform: [Q, d] array -> [Q, d] float32 unit rows."""

    def __init__(self, layer: SanerLayer, meta: dict):
        self.layer, self.meta = layer.eval(), meta
        self.dim = int(meta["dim"])

    def __call__(self, queries) -> np.ndarray:
        q = embedding_array(queries, "queries", 2, self.dim)
        with torch.inference_mode():
            out = F.normalize(self.layer(torch.from_numpy(q)), dim=-1)
        return out.numpy().astype(np.float32)


def load_saner(out_dir) -> SanerTransform:
    """The saved layer as a callable text-embedding transform (see `SanerTransform`)."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not (out_dir / META).is_file() or not (out_dir / WEIGHTS).is_file():
        raise VlmbiasError(f"{out_dir} is not a trained SANER layer directory (needs {META} and {WEIGHTS})")
    meta = json.loads((out_dir / META).read_text())
    layer = SanerLayer(int(meta["dim"]), int(meta["hidden"]))
    try:
        layer.load_state_dict(load_file(str(out_dir / WEIGHTS)))
    except (RuntimeError, KeyError) as e:
        raise VlmbiasError(f"SANER weights in {out_dir} do not match its {META}: {str(e).splitlines()[0][:200]}") from None
    return SanerTransform(layer, meta)


def apply_saner(queries, out_dir) -> np.ndarray:
    """Debias query embeddings [Q, d] with the layer saved in `out_dir`."""
    return load_saner(out_dir)(queries)
