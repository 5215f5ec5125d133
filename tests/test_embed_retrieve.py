import numpy as np
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit.data import build_manifest
from vlmbias.audit.embed import embed_images, embed_queries
from vlmbias.audit.models import load_encoder
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
