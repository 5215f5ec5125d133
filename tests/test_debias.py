import numpy as np
import pytest

from vlmbias import VlmbiasError
from vlmbias.encoders.projection import apply_projection, calibrated_projection, orthogonal_projection


def test_orthogonal_projection_removes_the_spurious_direction():
    male, female = np.array([1.0, 0, 0]), np.array([0.6, 0.8, 0])
    p = orthogonal_projection(np.stack([male, female]))
    # both group directions are annihilated, the orthogonal axis is kept
    np.testing.assert_allclose(p @ male, 0, atol=1e-12)
    np.testing.assert_allclose(p @ female, 0, atol=1e-12)
    np.testing.assert_allclose(p @ np.array([0, 0, 1.0]), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(p @ p, p, atol=1e-12)  # idempotent


def test_projected_query_is_equally_similar_to_both_groups():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(2, 8))
    p = orthogonal_projection(g[[0]] - g[[1]])  # remove the male-female difference direction
    q = rng.normal(size=(1, 8))
    qp = apply_projection(q, p)
    assert np.linalg.norm(qp) == pytest.approx(1.0)
    assert (qp @ g[0]).item() == pytest.approx((qp @ g[1]).item(), abs=1e-5)


def test_calibrated_projection_closed_form():
    spurious = np.array([[1.0, 0, 0]])
    pairs = [(np.array([0, 1.0, 0]), np.array([0, 0, 1.0]))]
    lam = 2.0
    d = np.array([0, 1.0, -1.0])
    expected = orthogonal_projection(spurious) @ np.linalg.inv(np.eye(3) + lam * np.outer(d, d))
    np.testing.assert_allclose(calibrated_projection(spurious, pairs, lam), expected)
    # larger lambda pulls the pair's projections together
    gap = lambda l: np.linalg.norm(calibrated_projection(spurious, pairs, l) @ d)
    assert gap(100.0) < gap(1.0) < gap(0.0)


def test_projection_cannot_erase_a_query():
    p = orthogonal_projection(np.array([[1.0, 0]]))
    with pytest.raises(VlmbiasError, match="removed a query entirely"):
        apply_projection(np.array([[1.0, 0]]), p)


def test_projection_transform_in_query_sets(tiny_hf):
    from vlmbias.audit.embed import embed_queries
    from vlmbias.encoders.models import load_encoder

    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    qs = {"queries": ["a doctor", "a nurse"]}
    base, _ = embed_queries("q", qs, enc)
    proj, _ = embed_queries("q", {**qs, "transform": {"projection": {"attributes": ["gender"], "calibrated": False}}}, enc)
    man, woman = enc.encode_texts(["a photo of a man", "a photo of a woman"])
    # after projection the queries are orthogonal to both group prompts; before, they were not
    np.testing.assert_allclose(proj @ np.stack([man, woman]).T, 0, atol=1e-5)
    assert np.abs(base @ np.stack([man, woman]).T).max() > 1e-3
    cal, _ = embed_queries("q", {**qs, "transform": {"projection": {"attributes": ["gender"], "lambda": 100}}}, enc)
    np.testing.assert_allclose(np.linalg.norm(cal, axis=1), 1, rtol=1e-5)
