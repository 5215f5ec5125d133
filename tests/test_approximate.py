"""Approximate retrieval (retrieval.method: approximate): faiss IVF / HNSW and its recall against exact."""
import numpy as np
import pytest

from vlmbias import VlmbiasError
from vlmbias import config as vconfig
from vlmbias.audit import approximate
from vlmbias.audit.approximate import check_spec, recall_table
from vlmbias.audit.retrieve import top_k


def approximate_with_recall(images, queries, k, spec, seed, recall_ks, query_ids, chunk_rows):
    """The approximate search with retrieve's exact top-k as the recall baseline, as rule retrieve runs it."""
    return approximate.approximate_with_recall(images, queries, k, spec, seed, recall_ks, query_ids, chunk_rows,
                                               lambda im, q, kk: top_k(im, q, kk, "auto", chunk_rows))


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _arc(degrees):
    a = np.radians(np.asarray(degrees, np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def test_recall_table_by_hand():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[0, 1, 7, 8], [7, 6, 5, 4]])  # query 2: the same rows in another order
    t = recall_table(approx, exact, ["a", "b"], [2, 4], "IVF")
    assert t[["query_id", "k", "n_found", "recall"]].values.tolist() == [
        ["a", 2, 2, 1.0], ["b", 2, 0, 0.0], ["a", 4, 2, 0.5], ["b", 4, 4, 1.0]]


@pytest.mark.parametrize("spec", [{"index": "ivf", "nlist": 1, "nprobe": 1},
                                  {"index": "hnsw", "m": 16, "ef_search": 400}])
def test_an_index_that_searches_everything_has_recall_one(spec):
    # one IVF list probed, or an HNSW search wider than the set: exhaustive, so it finds the exact top-k
    images, queries = _unit(300, 8, 0), _unit(5, 8, 1)
    scores, idx, recall = approximate_with_recall(images, queries, 20, spec, 0, [5, 20], list("abcde"), 64)
    exact_s, exact_i = top_k(images, queries, 20, "exact")
    assert (idx == exact_i).all()
    np.testing.assert_allclose(scores, exact_s, atol=1e-6)
    assert len(recall) == 10 and (recall["recall"] == 1.0).all() and (recall["n_exact"] == recall["k"]).all()


def test_ivf_recall_of_a_planted_miss():
    # two lists: A = 30 points at 0..29 degrees, B = 30 at 60..89. The query at 40.3 degrees is nearer
    # A's centroid (14.5) than B's (74.5), so one probe searches A only. Angular distances: A's
    # 11.3, 12.3, ...; B's 19.7, 20.7, ... The exact top 10 = 9 of A + B's 60 (19.7 < 20.3) -> 9/10;
    # the exact top 20 = 14 of A (11.3..24.3) + 6 of B (19.7..24.7) -> 14/20.
    images = _arc(list(range(30)) + list(range(60, 90)))
    q = _arc([40.3])
    spec = {"index": "ivf", "nlist": 2, "nprobe": 1}
    _, idx, recall = approximate_with_recall(images, q, 20, spec, 0, [10, 20], ["q"], 1000)
    assert recall["recall"].tolist() == [0.9, 0.7] and recall["n_found"].tolist() == [9, 14]
    assert set(idx[0]) <= set(range(30))  # only list A was searched
    assert recall["index"].iat[0].startswith("IVF2,Flat nprobe=1")
    # two probes: exhaustive again
    _, _, recall = approximate_with_recall(images, q, 20, {**spec, "nprobe": 2}, 0, [10, 20], ["q"], 1000)
    assert recall["recall"].tolist() == [1.0, 1.0]


def test_approximate_is_deterministic_and_seeded():
    images, queries = _unit(2000, 16, 3), _unit(10, 16, 4)
    spec = {"index": "ivf", "nlist": 40, "nprobe": 2}
    a = approximate_with_recall(images, queries, 50, spec, 7, [50], range(10), 300)
    b = approximate_with_recall(images, queries, 50, spec, 7, [50], range(10), 700)  # chunking: same index
    assert (a[1] == b[1]).all() and a[2].equals(b[2])
    assert a[2]["recall"].mean() < 1.0  # 2 of 40 lists: some of the exact top 50 lie elsewhere
    h1 = approximate_with_recall(images, queries, 50, {"index": "hnsw", "m": 4, "ef_search": 64}, 0, [50], range(10), 500)
    h2 = approximate_with_recall(images, queries, 50, {"index": "hnsw", "m": 4, "ef_search": 64}, 0, [50], range(10), 500)
    assert (h1[1] == h2[1]).all()


def test_runtime_errors_name_the_key():
    images, q = _unit(50, 4, 0), _unit(1, 4, 1)
    with pytest.raises(VlmbiasError, match=r"retrieval.approximate.nlist \(60\) exceeds the number of images \(50\)"):
        approximate_with_recall(images, q, 5, {"nlist": 60, "nprobe": 1}, 0, [5], ["q"], 100)
    # 50 lists of one point each, one probed: 1 image found where 5 were asked for
    with pytest.raises(VlmbiasError, match="found fewer than 5 images .* raise retrieval.approximate.nprobe"):
        approximate_with_recall(images, q, 5, {"nlist": 50, "nprobe": 1}, 0, [5], ["q"], 100)
    with pytest.raises(VlmbiasError, match=r"recall asked at k \[9\], beyond the retrieved 5"):
        approximate_with_recall(images, q, 5, {"nlist": 1, "nprobe": 1}, 0, [9], ["q"], 100)


def _config(retrieval):
    return {"datasets": {"d": {"type": "fairface", "root": "/x"}}, "models": {"m": {"backend": "hf", "name": "x"}},
            "query_sets": {"q": {"queries": ["a"]}}, "retrieval": retrieval}


@pytest.mark.parametrize("retrieval, message", [
    ({"method": "approximate", "approximate": {"index": "lsh"}}, "at retrieval.approximate.index: 'lsh' is not one of"),
    ({"method": "approximate", "approximate": {"nprobe": 0}}, "at retrieval.approximate.nprobe: 0 is less than"),
    ({"method": "approximate", "approximate": {"nlist": 4, "nprobe": 8}},
     r"retrieval.approximate.nprobe \(8\) exceeds nlist \(4\)"),
    ({"method": "approximate", "approximate": {"index": "hnsw", "nprobe": 8}},
     "retrieval.approximate.nprobe does not apply to index 'hnsw'"),
    ({"method": "approximate", "approximate": {"m": 8}}, "retrieval.approximate.m does not apply to index 'ivf'"),
    ({"method": "exact", "approximate": {"nprobe": 8}},
     "retrieval.approximate is set but retrieval.method is 'exact'"),
    ({"method": "fast"}, "at retrieval.method: 'fast' is not one of"),
])
def test_config_errors_name_the_key(retrieval, message):
    with pytest.raises(VlmbiasError, match=message):
        vconfig.validate(_config(retrieval))


def test_good_approximate_configs_validate():
    vconfig.validate(_config({"method": "approximate"}))
    vconfig.validate(_config({"method": "approximate", "approximate": {"index": "hnsw", "m": 8, "ef_search": 64}}))
    assert check_spec(None) == {"index": "ivf", "nlist": None, "nprobe": 16}
    with pytest.raises(VlmbiasError, match="retrieval.approximate.m must be an integer >= 2, got 1"):
        check_spec({"index": "hnsw", "m": 1})
