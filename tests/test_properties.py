"""Property-based tests (hypothesis) of the disparity metrics and of config validation.

The metric properties are stated so that they hold under both Skew conventions the project uses or
may use (a 0.5 pseudo-count, or the raw share with an absent class at 1/k): where they differ (a
class absent from the ranking), Skew's sign properties are only claimed for rankings in which every
class appears. Every metric is called through its public function with its defaults.
"""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vlmbias import VlmbiasError
from vlmbias.audit.metrics import (
    class_counts,
    fairness_disparity,
    max_skew,
    min_skew,
    ndkl,
    representation_disparity,
    skew,
)
from vlmbias.config import validate

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=150, deadline=None, derandomize=True)  # deterministic in CI, a few seconds


@st.composite
def ranking_case(draw, every_class_present: bool = False):
    """(classes, labels in rank order, positive target weights by class)."""
    n = draw(st.integers(2, 7))
    classes = [f"class-{i}" for i in range(n)]
    codes = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=60))
    if every_class_present:
        codes = codes + draw(st.permutations(range(n)))  # every class at least once, in a random order
    weights = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
    return classes, [classes[c] for c in codes], dict(zip(classes, (float(w) for w in weights)))


# ----------------------------------------------------------------------------------------- metrics

@FAST
@given(ranking_case())
def test_fairness_disparity_at_least_one(case):
    classes, labels, _ = case
    counts = class_counts(labels, classes)
    assert fairness_disparity(counts) >= 1
    assert fairness_disparity(counts, strict=True) >= fairness_disparity(counts)


@FAST
@given(ranking_case())
def test_representation_disparity_weighted_by_dataset_shares_sums_to_zero(case):
    classes, labels, target = case
    rd = representation_disparity(class_counts(labels, classes), target)
    shares = np.array([target[c] for c in classes]) / sum(target.values())
    # sum_c q_c * (ret_c - q_c) / q_c * 100 = 100 * (sum ret - sum q) = 0
    assert float(np.sum(shares * rd.to_numpy())) == pytest.approx(0.0, abs=1e-9)


@FAST
@given(ranking_case(every_class_present=True))
def test_max_skew_non_negative_min_skew_non_positive(case):
    classes, labels, target = case
    counts = class_counts(labels, classes)
    for tgt in (target, {c: 1.0 for c in classes}):  # the dataset's shares and uniform
        assert max_skew(counts, tgt) >= -1e-12
        assert min_skew(counts, tgt) <= 1e-12
        assert max_skew(counts, tgt) >= min_skew(counts, tgt)


@FAST
@given(ranking_case())
def test_ndkl_non_negative(case):
    classes, labels, target = case
    assert ndkl(labels, classes, target) >= 0


@FAST
@given(st.integers(2, 7), st.data())
def test_ndkl_zero_when_every_prefix_matches_the_target(n, data):
    # top-1 holds one class, so only a one-class target can match every prefix: rank that class only
    classes = [f"class-{i}" for i in range(n)]
    j = data.draw(st.integers(0, n - 1))
    k = data.draw(st.integers(1, 60))
    target = {c: float(c == classes[j]) for c in classes}
    # 0 up to rounding: ndkl's incremental KL (i ln i - ln i per prefix) leaves ~1e-17, not an exact 0
    assert ndkl([classes[j]] * k, classes, target) == 0.0
    # one item of another class anywhere makes some prefix differ from the target
    other = classes[(j + 1) % n]
    at = data.draw(st.integers(0, k))
    assert ndkl([classes[j]] * at + [other] + [classes[j]] * (k - at), classes, target) > 1e-12


@FAST
@given(ranking_case(), st.data())
def test_metrics_do_not_depend_on_class_order(case, data):
    classes, labels, target = case
    perm = data.draw(st.permutations(classes))
    c1, c2 = class_counts(labels, classes), class_counts(labels, perm)
    assert fairness_disparity(c1) == fairness_disparity(c2)
    assert fairness_disparity(c1, strict=True) == fairness_disparity(c2, strict=True)
    for a, b in [(representation_disparity(c1, target), representation_disparity(c2, target)),
                 (skew(c1, target), skew(c2, target))]:
        np.testing.assert_allclose(a.reindex(classes).to_numpy(), b.reindex(classes).to_numpy(), rtol=1e-12)
    # aligned arrays instead of mappings: permuted consistently with the classes
    arr1, arr2 = [target[c] for c in classes], [target[c] for c in perm]
    assert max_skew(c1, arr1) == pytest.approx(max_skew(c2, arr2), rel=1e-12)
    assert min_skew(c1, arr1) == pytest.approx(min_skew(c2, arr2), rel=1e-12)
    assert ndkl(labels, classes, arr1) == pytest.approx(ndkl(labels, perm, arr2), rel=1e-12)


# ------------------------------------------------------------------------------------------ config

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))


def _key_paths(node, prefix=()):
    """Every path of dict keys in the config (lists are not entered). The world block's contents are
    checked by the world generator, not by `validate` (the schema leaves it open), so only the
    block itself is mutated."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            if (*prefix, k) != ("world",):
                yield from _key_paths(v, (*prefix, k))


PATHS = sorted(_key_paths(DEFAULT), key=lambda p: [str(x) for x in p])
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 6), st.floats(allow_nan=False, width=32),
                      st.text(max_size=6), st.lists(st.integers(0, 3), max_size=2),
                      st.dictionaries(st.text(min_size=1, max_size=4), st.integers(), max_size=2))


@st.composite
def mutated_config(draw):
    config = copy.deepcopy(DEFAULT)
    path = draw(st.sampled_from(PATHS))
    parent = config
    for k in path[:-1]:
        parent = parent[k]
    key, kind = path[-1], draw(st.sampled_from(["drop", "retype", "misspell"]))
    named = [str(k) for k in path]
    if kind == "drop":
        del parent[key]
    elif kind == "retype":
        value = draw(ANY_VALUE)
        assume(type(value) is not type(parent[key]))
        parent[key] = value
    else:
        s = str(key)
        i = draw(st.integers(0, len(s)))
        wrong = s[:i] + draw(st.sampled_from(["x", "_", "s"])) + s[i + 1:]
        assume(wrong != s and wrong not in parent)
        parent[wrong] = parent.pop(key)
        named.append(wrong)
    return config, kind, named


@settings(max_examples=200, deadline=None, derandomize=True)
@given(mutated_config())
def test_config_mutations_validate_or_name_a_key(mutation):
    config, kind, named = mutation
    try:
        validate(config)
    except VlmbiasError as e:  # any other exception type fails the test
        msg = str(e)
        assert any(k in msg for k in named), (kind, named, msg)


def test_config_property_sees_every_block():
    # the mutation strategy reaches the whole default config, nested blocks included
    tops = {p[0] for p in PATHS}
    assert {"datasets", "models", "query_sets", "mitigation", "experiments", "images"} <= tops
    assert ("mitigation", "methods", "lora-thesis", "kind") in PATHS and math.isfinite(len(PATHS))
