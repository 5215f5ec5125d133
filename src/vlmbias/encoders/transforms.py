"""A query set's text-side transform block, applied to its query embeddings.

`transform` is the block a mitigated model `<base>~<method>` adds to every query set it is
audited on (`vlmbias.config.query_set_spec`); each entry names a fitted artifact on disk or the
fitting data a training-free method needs:
- `projection`: Chuang et al.'s (calibrated) projection, built with the encoder from group
  prompts and the given fitting `concepts` (`vlmbias.encoders.projection`);
- `bendvlm`: BendVLM per query, against the reference folder `reference` (`vlmbias.encoders.bendvlm`);
- `saner`: the trained SANER layer in folder `layer` (`vlmbias.encoders.saner`).
They run in that order on the per-query (template-ensembled, unit) embeddings. A prompt array
and a LoRA adapter are not transforms of embeddings: they load as models (`load_encoder`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from vlmbias.encoders.projection import apply_projection, projection_for

TEXT_TRANSFORMS = ("projection", "bendvlm", "saner")


def apply_text_transforms(encoder, embeddings: np.ndarray, concepts: Sequence[str],
                          names_attribute: Sequence, transform: dict | None) -> np.ndarray:
    """Apply `transform`'s text-side entries to query embeddings [Q, d].

    concepts: one concept word per query ("doctor"), used for the projection's calibration pairs
    when the block gives none and for BendVLM's augmented queries. names_attribute: per query,
    the attribute it names (BendVLM leaves such a query unchanged) or None."""
    transform = transform or {}
    out = embeddings
    projection = transform.get("projection")
    if projection:
        # calibration pairs are built per concept ("a photo of a male doctor"): the given fitting
        # concepts (mitigation split), else the queries' own concepts
        pair_concepts = projection.get("concepts") or sorted(set(concepts))
        out = apply_projection(out, projection_for(encoder, projection, pair_concepts))
    bend = transform.get("bendvlm")
    if bend:  # BendVLM (test-time, per query; references of the fitting data only)
        from vlmbias.encoders.bendvlm import apply_transform

        table = pd.DataFrame({"concept": list(concepts), "names_attribute": list(names_attribute)})
        out = apply_transform(encoder, out, table, bend)
    saner = transform.get("saner")
    if saner:  # a trained SANER layer on the text embedding
        from vlmbias.encoders.saner import apply_saner

        out = apply_saner(out, saner["layer"])
    return out
