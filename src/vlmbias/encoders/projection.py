"""Training-free debiasing of query embeddings (text side only; images are untouched).

- Prompt engineering: the thesis' "... of any gender or race" suffixes (`queries.transform.suffix`).
- Projection (Chuang et al. 2023, "Debiasing Vision-Language Models via Biased Prompts"): remove
  the directions spanned by embeddings of prompts that name the groups ("a photo of a man",
  "a photo of a woman", ...) with the orthogonal projection P0 = I - A (A^T A)^+ A^T, or its
  calibrated form, which also pulls together embeddings of prompts that differ only in the group
  ("a photo of a male doctor" / "a photo of a female doctor"):

      P* = P0 (I + lambda/|S| * sum_{(i,j) in S} (z_i - z_j)(z_i - z_j)^T)^-1

  Projected queries are renormalised, so retrieval stays a cosine similarity.
"""
from __future__ import annotations

import itertools

import numpy as np

from vlmbias import VlmbiasError

# Group words per attribute class, used to build the biased prompts when config gives none.
DEFAULT_GROUP_WORDS = {
    "gender": {"Male": "man", "Female": "woman"},
    "race": {"East Asian": "East Asian person", "Indian": "Indian person", "Black": "Black person",
             "White": "White person", "Middle Eastern": "Middle Eastern person",
             "Latino_Hispanic": "Latino/Hispanic person", "Southeast Asian": "Southeast Asian person"},
}
PAIR_WORDS = {
    "gender": {"Male": "male", "Female": "female"},
    "race": {c: c.replace("_", "/") for c in DEFAULT_GROUP_WORDS["race"]},
}


def orthogonal_projection(spurious: np.ndarray) -> np.ndarray:
    """P0 = I - A (A^T A)^+ A^T for A = spurious embeddings as columns ([n, d] rows in)."""
    a = np.asarray(spurious, np.float64).T  # [d, n]
    return np.eye(a.shape[0]) - a @ np.linalg.pinv(a.T @ a) @ a.T


def calibrated_projection(spurious: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]], lam: float) -> np.ndarray:
    """Chuang et al.'s calibrated projection (closed form above)."""
    p0 = orthogonal_projection(spurious)
    if not pairs:
        return p0
    diffs = np.stack([np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in pairs])  # [m, d]
    m = np.eye(p0.shape[0]) + lam / len(pairs) * diffs.T @ diffs
    return p0 @ np.linalg.inv(m)


def apply_projection(queries: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = queries.astype(np.float64) @ p.T
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    if (norms < 1e-8).any():
        raise VlmbiasError("projection removed a query entirely (it lies in the span of the group prompts)")
    return (out / norms).astype(np.float32)


def projection_for(encoder, spec: dict, concepts: list[str]) -> np.ndarray:
    """Build the projection a query set's `transform.projection` block asks for, using `encoder`.

    spec: {attributes: [gender, ...], calibrated: bool, lambda: float, template: "a photo of a {}",
           groups: {attribute: {class: words}}}. Pairs for calibration are "a photo of a {group word}
           {concept}" for every pair of classes of an attribute and every query concept.
    """
    attributes = spec.get("attributes") or ["gender"]
    template = spec.get("template", "a photo of a {}")
    groups = spec.get("groups") or {}
    prompts = []
    for attr in attributes:
        words = groups.get(attr) or DEFAULT_GROUP_WORDS.get(attr)
        if not words:
            raise VlmbiasError(f"projection: no group words for attribute {attr!r}; give transform.projection.groups")
        prompts += [template.format(w) for w in words.values()]
    spurious = encoder.encode_texts(prompts)
    if not spec.get("calibrated", True):
        return orthogonal_projection(spurious)
    pair_texts = []
    for attr in attributes:
        words = (groups.get(attr) or PAIR_WORDS.get(attr) or DEFAULT_GROUP_WORDS[attr]).values()
        for concept in concepts:
            for a, b in itertools.combinations(words, 2):
                pair_texts.append((template.format(f"{a} {concept}"), template.format(f"{b} {concept}")))
    if not pair_texts:
        return orthogonal_projection(spurious)
    emb = encoder.encode_texts([t for pair in pair_texts for t in pair])
    pairs = [(emb[2 * i], emb[2 * i + 1]) for i in range(len(pair_texts))]
    return calibrated_projection(spurious, pairs, float(spec.get("lambda", 500.0)))
