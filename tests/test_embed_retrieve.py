import numpy as np
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit.data import build_manifest
from vlmbias.audit.embed import embed_images, embed_queries
from vlmbias.encoders.models import load_encoder
from vlmbias.audit.queries import expand_query_set
from vlmbias.audit.retrieve import rankings_table, top_k


@pytest.fixture(scope="module")
def hf_encoder(tiny_hf):
    return load_encoder({"backend": "hf", "name": str(tiny_hf)})


def test_corrupt_images_skipped_and_listed(fairface_dir, tmp_path, hf_encoder):
    manifest, _, _ = build_manifest({"type": "fairface", "root": str(fairface_dir)})
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes((fairface_dir / "val" / "1.jpg").read_bytes()[:200])
    manifest.loc[0, "path"], manifest.loc[5, "path"] = str(bad), str(truncated)
    emb, rows, skipped = embed_images(manifest, hf_encoder, batch_size=8, num_workers=0, max_bad_fraction=0.1)
    assert sorted(skipped["image_id"]) == sorted([manifest.image_id[0], manifest.image_id[5]])
    assert skipped["reason"].str.len().gt(0).all()
    assert len(rows) == len(emb) == len(manifest) - 2
    assert set(rows["image_id"]).isdisjoint(skipped["image_id"])
    with pytest.raises(VlmbiasError, match="2 of 42 images could not be read"):
        embed_images(manifest, hf_encoder, batch_size=8, num_workers=0, max_bad_fraction=0.01)


def test_workers_give_same_embeddings(fairface_dir, hf_encoder):
    manifest, _, _ = build_manifest({"type": "fairface", "root": str(fairface_dir)})
    a, ra, _ = embed_images(manifest, hf_encoder, batch_size=5, num_workers=0)
    b, rb, _ = embed_images(manifest, hf_encoder, batch_size=16, num_workers=2)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert ra.equals(rb)


def test_query_sets():
    q = expand_query_set("s", {"queries": ["a doctor", {"text": "a Black person", "names": {"race": "Black"}}],
                               "templates": ["{}", "a photo of {}"], "transform": {"suffix": " of any gender"}})
    assert q["texts"][0] == ["a doctor of any gender", "a photo of a doctor of any gender"]
    assert q.loc[1, ["names_attribute", "names_class"]].tolist() == ["race", "Black"]
    with pytest.raises(VlmbiasError, match="query set 'empty' has no queries"):
        expand_query_set("empty", {"queries": []})
    with pytest.raises(VlmbiasError, match="duplicate query id"):
        expand_query_set("d", {"queries": ["a", "a"]})
    with pytest.raises(VlmbiasError, match="exactly one"):
        expand_query_set("t", {"queries": ["a"], "templates": ["a photo"]})


def test_templates_per_language():
    spec = {"templates": {"en": ["{}", "a photo of {}"], "zh": ["{}的照片"]},
            "queries": ["a doctor", {"text": "医生", "lang": "zh"}]}
    q = expand_query_set("multi", spec)
    assert q["texts"].tolist() == [["a doctor", "a photo of a doctor"], ["医生的照片"]]
    with pytest.raises(VlmbiasError, match="language 'ar', which has no templates"):
        expand_query_set("multi", {**spec, "queries": [{"text": "طبيب", "lang": "ar"}]})


def test_template_ensemble_is_normalised_mean(hf_encoder):
    emb, table = embed_queries("s", {"queries": ["a nurse"], "templates": ["{}", "a photo of {}"]}, hf_encoder)
    parts = hf_encoder.encode_texts(["a nurse", "a photo of a nurse"]).mean(0)
    np.testing.assert_allclose(emb[0], parts / np.linalg.norm(parts), atol=1e-5)
    assert table["text"][0] == "a nurse | a photo of a nurse"


def test_top_k_exact_matches_faiss_and_brute_force():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(500, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    queries = images[[3, 10]] + 0.01
    s1, i1 = top_k(images, queries, 20, "exact")
    s2, i2 = top_k(images, queries, 20, "faiss")
    brute = np.argsort(-(queries @ images.T), axis=1)[:, :20]
    assert (i1 == brute).all() and (i1 == i2).all()
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert i1[0, 0] == 3 and i1[1, 0] == 10
    assert top_k(images, queries, 900, "exact")[1].shape == (2, 500)  # k larger than the dataset


def test_ties_broken_by_row():
    images = np.ones((6, 2), np.float32) / np.sqrt(2)
    _, idx = top_k(images, images[:1], 4, "exact")
    assert idx.tolist() == [[0, 1, 2, 3]]


def test_rankings_table_carries_labels(fairface_dir, hf_encoder):
    manifest, _, _ = build_manifest({"type": "fairface", "root": str(fairface_dir)})
    emb, rows, _ = embed_images(manifest, hf_encoder, num_workers=0)
    q, qt = embed_queries("s", {"queries": ["a doctor", "a nurse"]}, hf_encoder)
    scores, idx = top_k(emb, q, 5)
    r = rankings_table(scores, idx, rows, qt, manifest, "m", "d", "s")
    assert len(r) == 10 and r["rank"].tolist()[:5] == [1, 2, 3, 4, 5]
    labels = manifest.set_index("image_id").loc[r["image_id"], "race"].tolist()
    assert r["race"].tolist() == labels
    assert (r.groupby("query_id")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()


@pytest.mark.parametrize("method", ["exact", "faiss"])
def test_ties_broken_by_row_at_the_cut(method):
    # 1,200 identical images after 3 better ones: the cut at k falls inside the tie, which must keep
    # the lowest rows, in row order, on every retrieval path
    rng = np.random.default_rng(0)
    imgs = np.tile(np.array([[0.6, 0.8, 0.0]], np.float32), (1203, 1))
    imgs[[500, 7, 1100]] = [[1.0, 0.0, 0.0], [0.99, 0.141, 0.0], [0.98, 0.199, 0.0]]
    order = rng.permutation(1203)  # shuffled rows: the rule is by row, not by insertion luck
    imgs = imgs[order]
    best = [int(np.flatnonzero(order == r)[0]) for r in (500, 7, 1100)]
    tied = sorted(set(range(1203)) - set(best))
    scores, idx = top_k(imgs, np.array([[1.0, 0.0, 0.0]], np.float32), 20, method)
    assert idx[0].tolist() == best + tied[:17]
    assert (np.diff(scores[0]) <= 0).all()


class _ChunkOnly:
    """An image array that hands out at most `limit` rows per read: a retrieval that wanted the
    whole array in memory at once would fail here."""

    def __init__(self, array, limit):
        self.array, self.limit, self.reads = array, limit, []
        self.shape, self.ndim = array.shape, array.ndim

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        assert isinstance(key, slice) and len(range(*key.indices(len(self.array)))) <= self.limit, key
        self.reads.append(key)
        return self.array[key]


@pytest.mark.parametrize("method", ["exact", "faiss"])
def test_chunked_memory_mapped_retrieval_equals_the_in_memory_one(tmp_path, method):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(1000, 16)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    queries = images[[5, 500, 999]] + 0.05 * rng.normal(size=(3, 16)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r", allow_pickle=False)
    whole_s, whole_i = top_k(images, queries, 50, method, chunk_rows=10**6)
    brute = np.argsort(-(queries @ images.T), axis=1, kind="stable")[:, :50]
    assert (whole_i == brute).all()
    for chunk in (1, 37, 100, 999):
        s, i = top_k(mapped, queries, 50, method, chunk_rows=chunk)
        assert (i == whole_i).all(), chunk
        np.testing.assert_allclose(s, whole_s, atol=1e-6)  # per-chunk products may differ in the last bit
    spy = _ChunkOnly(images, 64)
    assert (top_k(spy, queries, 50, method, chunk_rows=64)[1] == whole_i).all()
    assert len(spy.reads) == 16


@pytest.mark.parametrize("method", ["exact", "faiss"])
def test_ties_across_chunk_borders_keep_the_lowest_rows(tmp_path, method):
    # 1,203 rows, 1,200 of them tied (exactly representable scores, so every kernel agrees), 3 better
    # ones; chunks of 100 put the tie across 12 borders and the cut (k = 250) inside the tie
    imgs = np.tile(np.array([[0.75, 0.5, 0.0]], np.float32), (1203, 1))
    best = [1150, 7, 640]
    imgs[best] = [[1.0, 0.0, 0.0], [0.875, 0.25, 0.0], [0.8125, 0.25, 0.0]]
    np.save(tmp_path / "images.npy", imgs)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r", allow_pickle=False)
    q = np.array([[1.0, 0.0, 0.0]], np.float32)
    tied = sorted(set(range(1203)) - set(best))
    for chunk in (100, 1203, 7):
        scores, idx = top_k(mapped, q, 250, method, chunk_rows=chunk)
        assert idx[0].tolist() == best + tied[:247], chunk
        assert scores[0].tolist() == [1.0, 0.875, 0.8125] + [0.75] * 247
    with pytest.raises(VlmbiasError, match="chunk_rows must be at least 1"):
        top_k(mapped, q, 5, method, chunk_rows=0)


def test_retrieve_cli_reads_images_memory_mapped(tmp_path, monkeypatch):
    import pandas as pd

    from vlmbias.audit import retrieve
    from vlmbias.io import read_table, write_table

    images = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "queries.npy", np.array([[1.0, 0, 0, 0]], np.float32))
    ids = [f"i{n}" for n in range(5)]
    write_table(pd.DataFrame({"row": range(5), "image_id": ids}), tmp_path / "rows.parquet")
    write_table(pd.DataFrame({"row": [0], "query_id": ["q"], "query": ["x"], "text": ["x"], "lang": ["en"],
                              "concept": ["x"], "names_attribute": [None], "names_class": [None]}),
                tmp_path / "queries.parquet")
    write_table(pd.DataFrame({"image_id": ids, "path": ["/p"] * 5, "gender": ["Male"] * 5}), tmp_path / "m.parquet")
    seen = []
    real = retrieve.top_k
    monkeypatch.setattr(retrieve, "top_k", lambda images, *a: seen.append(images) or real(images, *a))
    retrieve.main(["--images-npy", str(tmp_path / "images.npy"), "--images-table", str(tmp_path / "rows.parquet"),
                   "--queries-npy", str(tmp_path / "queries.npy"), "--queries-table", str(tmp_path / "queries.parquet"),
                   "--manifest", str(tmp_path / "m.parquet"), "--k", "3", "--method", "exact", "--chunk-rows", "2",
                   "--model", "m", "--dataset", "d", "--query-set", "s", "--out", str(tmp_path / "out.parquet")])
    assert isinstance(seen[0], np.memmap)
    out = read_table(tmp_path / "out.parquet")
    assert out["image_id"].tolist() == ["i0", "i4", "i1"]  # the tie of rows 0 and 4 (chunks 1 and 3) by row


@pytest.mark.parametrize("cut", ["argpartition", "torch.topk"])
def test_vectorised_selection_equals_the_row_rule_under_heavy_ties(cut, monkeypatch):
    """The exact path's batched selection (argpartition or torch.topk for the cut, then (-score, row)
    order) picks exactly what the one-row rule picks, on integer scores where most values tie."""
    from vlmbias.audit import retrieve
    from vlmbias.audit.retrieve import _select, _select_rows

    monkeypatch.setattr(retrieve, "TORCH_TOPK_FROM", 1 << 40 if cut == "argpartition" else 0)

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, q = int(rng.integers(1, 300)), int(rng.integers(1, 5))
        k = int(rng.integers(1, n + 1))
        sims = rng.integers(0, int(rng.integers(1, 20)), (q, n)).astype(np.float32)
        # the same columns (in no order: the merge orders them)
        np.testing.assert_array_equal(np.sort(_select_rows(sims, k)), np.sort(np.stack([_select(r, k) for r in sims])))
