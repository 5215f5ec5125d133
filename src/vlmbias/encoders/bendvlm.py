"""BendVLM: test-time, per-query debiasing of text query embeddings (Gerych et al., NeurIPS 2024,
"BendVLM: Test-Time Debiasing of Vision-Language Embeddings"). Images are untouched.

Step 1, local attribute subspace. Each query q comes with attribute-augmented versions of itself,
one or more per group ("a photo of a male doctor", "a photo of a female doctor"; the paper asks an
LLM for them, `augment_queries` builds them from group words). Their differences span the
query's *own* attribute directions; optionally the global group prompts ("a photo of a man",
"a photo of a woman") are added, as the authors' released experiments do. The query is
projected onto the orthogonal complement of that span and renormalised:

    z1 = P q / |P q|,   P = I - A^T (A A^T)^+ A,   A = [v_2 - v_1; ...; v_m - v_1; (global prompts)]

Step 2, equal distance to a labelled reference set. For each group g, the `n_neighbors`
reference images of g most similar to z1 are averaged (unit rows) into mu_g. The paper asks for
the point that stays closest to z1 while being equally similar to every group:

    max_z  z . z1   s.t.  |z| = 1,  z . mu_g = z . mu_1  for g = 2..G

With C the (G-1) x d matrix of rows mu_g - mu_1, the constraints say C z = 0, so the feasible
set is the unit sphere of the null space of C, and since z . z1 = z . (N z1) there for the
orthogonal projector N = I - C^T (C C^T)^+ C, the optimum is z* = N z1 / |N z1|: a closed form
for any number of groups (the authors solve it numerically with SLSQP). Because the mean cosine
similarity of z to the images of group g is z . mu_g / |z| (mu_g the mean of unit rows), z*'s
mean similarity is exactly equal across groups. Equivalently, z* (before renormalising) is the
minimiser of |z - z1|^2 under the same linear constraints.

Defaults and their sources:
- `n_neighbors`: 100 reference images per group for a two-group attribute (gender), 10 for
  more groups (race): the values of the authors' released experiments
  (github.com/waltergerych/bend_vlm, demo notebook). Capped at the group's size. None in the
  paper's code means a knee-point choice, not implemented here.
- `global_prompts=True` in `bendvlm_for`: the authors' released step 1 projects out the global
  group prompts together with the (halved) pairwise differences of the augmented queries;
  halving does not change the span, so plain differences are used here.
- augmentation template "a photo of a {group word} {concept}" with the group words of
  `projection.PAIR_WORDS` (the paper generates them with an LLM; ours are fixed words).

Queries that name the attribute themselves ("a photo of a female doctor") must not be bent:
`keep` marks rows returned unchanged (the audit's query table has `names_attribute`).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.encoders.base import embedding_array
from vlmbias.encoders.projection import DEFAULT_GROUP_WORDS, PAIR_WORDS, orthogonal_projection
from vlmbias.io import read_table

_matrix = partial(embedding_array, dtype=np.float64, nonzero=False)  # float64: BendVLM's own arithmetic

NEIGHBORS_TWO_GROUPS = 100  # authors' released experiments, gender
NEIGHBORS_MANY_GROUPS = 10  # authors' released experiments, race
TEMPLATE = "a photo of a {}"
_EPS = 1e-8


def default_neighbors(n_groups: int) -> int:
    """The authors' per-group neighbour count: 100 for two groups (gender), 10 for more (race)."""
    return NEIGHBORS_TWO_GROUPS if n_groups == 2 else NEIGHBORS_MANY_GROUPS


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if (norms < _EPS).any():
        raise VlmbiasError(f"{what} contains an all-zero embedding")
    return x / norms



def local_projection(augmented: np.ndarray, spurious: np.ndarray | None = None) -> np.ndarray:
    """Step 1's projector for one query: removes the span of the differences of its augmented
    embeddings ([m, d], m >= 2) and of the optional global group prompts ([s, d])."""
    diffs = augmented[1:] - augmented[:1]
    rows = diffs if spurious is None else np.concatenate([diffs, spurious])
    return orthogonal_projection(rows)


def equalize(z: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Step 2's closed form: the unit vector nearest to `z` ([d]) whose dot products with every
    row of `means` ([G, d], G >= 2) are equal."""
    c = means[1:] - means[:1]
    out = z - c.T @ (np.linalg.pinv(c @ c.T) @ (c @ z))
    norm = np.linalg.norm(out)
    if norm < _EPS:
        raise VlmbiasError("BendVLM step 2 removed a query entirely: it lies in the span of the "
                           "differences of the reference groups' mean embeddings")
    return out / norm


def group_means(z: np.ndarray, refs: np.ndarray, labels: np.ndarray, groups: Sequence, k: int) -> np.ndarray:
    """Mean of the k unit reference rows of each group most similar to z (ties by row order)."""
    sims = refs @ z
    out = []
    for g in groups:
        idx = np.flatnonzero(labels == g)
        top = idx[np.argsort(-sims[idx], kind="stable")[:k]]
        out.append(refs[top].mean(0))
    return np.stack(out)


def bendvlm(queries, augmented, ref_embeddings, ref_labels, *, groups: Sequence | None = None,
            spurious=None, n_neighbors: int | None = None, keep=None, step1: bool = True,
            step2: bool = True) -> np.ndarray:
    """Debias query embeddings with BendVLM's two steps (module docstring).

    queries: [Q, d] query embeddings. augmented: [Q, m, d], m >= 2 attribute-augmented versions
    of each query (any order; only their differences matter). ref_embeddings: [R, d] reference
    image embeddings; ref_labels: [R] their attribute classes. groups: the classes to equalise
    (default: the sorted distinct labels; each must have a reference image). spurious: optional
    [s, d] global group-prompt embeddings also removed in step 1. n_neighbors: reference images
    per group (default `default_neighbors(len(groups))`). keep: optional [Q] booleans, rows
    returned unchanged (queries that name the attribute). Returns [Q, d] float32 unit rows.
    """
    q = _matrix(queries, "queries", 2)
    n, d = q.shape
    if n == 0:
        raise VlmbiasError("no queries to debias")
    aug = _matrix(augmented, "augmented query embeddings", 3, d)
    if aug.shape[0] != n:
        raise VlmbiasError(f"augmented query embeddings are given for {aug.shape[0]} queries, there are {n}")
    if step1 and aug.shape[1] < 2:
        raise VlmbiasError(f"each query needs at least 2 attribute-augmented versions, got {aug.shape[1]}")
    spur = None if spurious is None else _matrix(spurious, "spurious prompt embeddings", 2, d)
    keep_mask = np.zeros(n, bool) if keep is None else np.asarray(keep, dtype=bool).reshape(-1)
    if keep_mask.shape != (n,):
        raise VlmbiasError(f"keep must have one flag per query ({n}), got {keep_mask.size}")
    q = _unit_rows(q, "queries")

    if step2:
        refs = _unit_rows(_matrix(ref_embeddings, "reference image embeddings", 2, d), "reference image embeddings")
        labels = np.asarray(ref_labels, dtype=object).reshape(-1)
        if len(labels) != len(refs):
            raise VlmbiasError(f"{len(labels)} reference labels for {len(refs)} reference images")
        groups = sorted({x for x in labels if not pd.isna(x)}, key=str) if groups is None else list(groups)
        if len(groups) < 2 or len(set(groups)) != len(groups):
            raise VlmbiasError(f"BendVLM needs at least 2 distinct groups to equalise, got {groups}")
        empty = [g for g in groups if not (labels == g).any()]
        if empty:
            raise VlmbiasError(f"group(s) {empty} have no reference images; every group needs at least one")
        k = default_neighbors(len(groups)) if n_neighbors is None else n_neighbors
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise VlmbiasError(f"n_neighbors must be an integer >= 1, got {n_neighbors!r}")

    out = q.copy()
    for i in np.flatnonzero(~keep_mask):
        z = q[i]
        if step1:
            z = local_projection(aug[i], spur) @ z
            norm = np.linalg.norm(z)
            if norm < _EPS:
                raise VlmbiasError(f"BendVLM step 1 removed query {i} entirely: it lies in the span of its "
                                   "augmented versions' differences")
            z = z / norm
        if step2:
            z = equalize(z, group_means(z, refs, labels, groups, int(k)))
        out[i] = z
    return out.astype(np.float32)


def augment_queries(concepts: Sequence[str], attribute: str = "gender", *, words: dict | None = None,
                    template: str = TEMPLATE) -> tuple[list[str], list[list[str]]]:
    """Attribute-augmented texts per concept: ("a photo of a male doctor", "a photo of a female
    doctor"). Returns (group classes, [per concept: one text per class]). `words` overrides the
    {class: word} map (default `projection.PAIR_WORDS[attribute]`)."""
    words = words or PAIR_WORDS.get(attribute)
    if not words:
        raise VlmbiasError(f"BendVLM: no group words for attribute {attribute!r}; give words={{class: word}}")
    concepts = list(concepts)
    if not concepts:
        raise VlmbiasError("BendVLM: no query concepts to augment")
    bad = [c for c in concepts if not isinstance(c, str) or not c.strip()]
    if bad:
        raise VlmbiasError(f"BendVLM: query concepts must be non-empty strings, got {bad[:3]}")
    classes = list(words)
    return classes, [[template.format(f"{words[c]} {concept.strip()}") for c in classes] for concept in concepts]


def bendvlm_for(encoder, queries, concepts: Sequence[str], ref_embeddings, ref_labels, *,
                attribute: str = "gender", words: dict | None = None, template: str = TEMPLATE,
                global_prompts: bool = True, n_neighbors: int | None = None, keep=None) -> np.ndarray:
    """BendVLM with the augmentations encoded by `encoder` (an `encoders.models.Encoder`).

    queries: [Q, d] embeddings of the queries (as `embed_queries` makes them); concepts: the
    concept of each query ("doctor"), used to build its augmented versions; ref_embeddings /
    ref_labels: the labelled reference images (their `attribute` classes, e.g. "Male"/"Female",
    which must be the keys of `words`). global_prompts: also remove "a photo of a man" / "a
    photo of a woman" (`projection.DEFAULT_GROUP_WORDS`) in step 1, as the authors' experiments do.
    """
    concepts = list(concepts)
    q = np.asarray(queries)
    if q.ndim != 2 or len(concepts) != len(q):
        raise VlmbiasError(f"one concept per query is needed: {len(concepts)} concepts for queries of shape {q.shape}")
    classes, texts = augment_queries(concepts, attribute, words=words, template=template)
    flat = encoder.encode_texts([t for row in texts for t in row])
    aug = flat.reshape(len(concepts), len(classes), -1)
    spurious = None
    if global_prompts:
        gwords = DEFAULT_GROUP_WORDS.get(attribute) or {}
        missing = [c for c in classes if c not in gwords]
        if missing:
            raise VlmbiasError(f"BendVLM: no global group prompt for {attribute} class(es) {missing}; "
                               "use global_prompts=False")
        spurious = encoder.encode_texts([template.format(gwords[c]) for c in classes])
    return bendvlm(q, aug, ref_embeddings, ref_labels, groups=classes, spurious=spurious,
                   n_neighbors=n_neighbors, keep=keep)


# ---------------------------------------------------------------- a fitted reference set
# The mitigation stage (`mitigate/bendvlm.py`) embeds a method's labelled reference images once with the base model
# and writes them to a folder; the audit applies BendVLM to the query embeddings with them
# (transform `bendvlm`, `apply_transform`); the images are the base model's.
REFERENCE_NPY, REFERENCE_TABLE = "reference.npy", "reference.parquet"


def load_reference(folder) -> tuple[np.ndarray, pd.DataFrame]:
    """(reference embeddings [R, d], their table with the attribute labels) of a fitted folder."""
    folder = Path(folder)
    if not (folder / REFERENCE_NPY).is_file() or not (folder / REFERENCE_TABLE).is_file():
        raise VlmbiasError(f"{folder} is not a BendVLM reference folder (needs {REFERENCE_NPY} and {REFERENCE_TABLE})")
    emb = np.load(folder / REFERENCE_NPY, allow_pickle=False)
    table = read_table(str(folder / REFERENCE_TABLE))
    if len(table) != len(emb):
        raise VlmbiasError(f"{folder}: {len(table)} reference rows for {len(emb)} embeddings")
    return emb, table


def apply_transform(encoder, queries: np.ndarray, table: pd.DataFrame, spec: dict,
                    reference: tuple[np.ndarray, pd.DataFrame] | None = None) -> np.ndarray:
    """The audit's `bendvlm` query transform: BendVLM per attribute in `spec['attributes']` order
    (default gender), with the references in `spec['reference']` (or `reference`, as
    `load_reference` returns it). table: one row per query, `concept` (the word its augmented
    versions are built around; the caller fills it for queries without one) and `names_attribute`;
    queries naming the attribute are kept unchanged."""
    emb, ref = reference if reference is not None else load_reference(spec["reference"])
    concepts = list(table["concept"])
    out = np.asarray(queries, np.float32)
    for attr in spec.get("attributes") or ["gender"]:
        if attr not in ref.columns:
            raise VlmbiasError(f"BendVLM: the reference table has no {attr!r} labels")
        keep = (table["names_attribute"] == attr).to_numpy()
        out = bendvlm_for(encoder, out, concepts, emb, ref[attr].to_numpy(), attribute=attr,
                          global_prompts=spec.get("global_prompts", True), n_neighbors=spec.get("n_neighbors"),
                          keep=keep)
    return out
