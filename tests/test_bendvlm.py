import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.encoders.bendvlm import (
    augment_queries,
    bendvlm,
    bendvlm_for,
    default_neighbors,
    equalize,
    group_means,
)

D = 8
E = np.eye(D)
C, G, X = E[0], E[1], E[2]  # concept, planted gender direction, an unrelated direction


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def planted_refs(n=40, seed=0, strength=2.0):
    """Reference images whose gender is written along G: Male rows lean +G, Female rows -G."""
    rng = np.random.default_rng(seed)
    male = unit(rng.normal(size=(n, D)) + strength * G)
    female = unit(rng.normal(size=(n, D)) - strength * G)
    return np.concatenate([male, female]), np.array(["Male"] * n + ["Female"] * n)


def mean_sims(z, refs, labels, groups=("Male", "Female")):
    return np.array([(refs[labels == g] @ z).mean() for g in groups])


def test_step1_removes_the_querys_own_attribute_direction():
    q = unit(C + 0.6 * G + 0.2 * X)[None]
    aug = np.stack([unit(C + G + 0.2 * X), unit(C - G + 0.2 * X)])[None]  # "male doctor", "female doctor"
    out = bendvlm(q, aug, None, None, step2=False)[0]
    assert abs(out @ G) < 1e-6  # the planted direction is gone
    np.testing.assert_allclose(out, unit(C + 0.2 * X), atol=1e-6)  # everything else is kept
    assert np.linalg.norm(out) == pytest.approx(1.0)


def test_step2_equalises_mean_similarity_to_each_group():
    refs, labels = planted_refs()
    q = unit(C + 0.5 * G)[None]  # a neutral query that leans male
    aug = np.stack([unit(C + G), unit(C - G)])[None]
    before = mean_sims(q[0], refs, labels)
    assert before[0] - before[1] > 0.3
    out = bendvlm(q, aug, refs, labels, n_neighbors=1000)[0]  # every reference image counts
    after = mean_sims(out, refs, labels)
    assert abs(after[0] - after[1]) < 1e-6
    assert out @ C > 0.9  # the query still means the concept


def test_step2_closed_form_is_the_constrained_optimum_for_three_groups():
    rng = np.random.default_rng(1)
    refs = unit(rng.normal(size=(60, D)) + 1.5 * np.repeat(E[3:6], 20, axis=0))
    labels = np.repeat(np.array(["a", "b", "c"]), 20)
    z1 = unit(rng.normal(size=D))
    means = group_means(z1, refs, labels, ["a", "b", "c"], 5)
    z = equalize(z1, means)
    dots = means @ z
    np.testing.assert_allclose(dots, dots[0], atol=1e-12)  # feasible
    # optimal: no feasible unit vector is closer to z1
    c = means[1:] - means[:1]
    null = np.eye(D) - c.T @ np.linalg.pinv(c @ c.T) @ c
    others = unit(rng.normal(size=(2000, D)) @ null)
    assert (others @ z1).max() <= z @ z1 + 1e-12
    # the module-level call with step 1 off gives the same vector
    out = bendvlm(z1[None], np.zeros((1, 2, D)), refs, labels, n_neighbors=5, step1=False)[0]
    np.testing.assert_allclose(out, z, atol=1e-6)


def test_neighbours_are_the_closest_images_of_each_group():
    refs = unit(np.array([[1, 0.0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]))
    labels = np.array(["m", "m", "f", "f"])
    np.testing.assert_allclose(group_means(np.array([1.0, 0, 0]), refs, labels, ["m", "f"], 1),
                               np.stack([refs[0], refs[2]]))


def test_attributed_query_is_kept():
    refs, labels = planted_refs()
    female_doctor = unit(C - G)
    q = np.stack([unit(C + 0.5 * G), female_doctor])
    aug = np.stack([np.stack([unit(C + G), unit(C - G)])] * 2)
    out = bendvlm(q, aug, refs, labels, keep=[False, True])
    np.testing.assert_allclose(out[1], female_doctor, atol=1e-7)
    sims = mean_sims(out[1], refs, labels)
    assert sims[1] > sims[0] + 0.3  # still retrieves women first
    # without the flag the same query would be bent to parity
    bent = bendvlm(q, aug, refs, labels, n_neighbors=1000)[1]
    assert abs(np.diff(mean_sims(bent, refs, labels))[0]) < 1e-6


def test_defaults_follow_the_authors_experiments():
    assert default_neighbors(2) == 100 and default_neighbors(7) == 10
    classes, texts = augment_queries(["doctor", " nurse "])
    assert classes == ["Male", "Female"]
    assert texts == [["a photo of a male doctor", "a photo of a female doctor"],
                     ["a photo of a male nurse", "a photo of a female nurse"]]


@pytest.mark.parametrize("kwargs, message", [
    ({"queries": np.ones(D)}, "queries must have 2 dimensions"),
    ({"augmented": np.ones((2, 2, D))}, "given for 2 queries, there are 1"),
    ({"augmented": np.ones((1, 2, D + 1))}, "embedding size 9, expected 8"),
    ({"augmented": np.ones((1, 1, D))}, "at least 2 attribute-augmented versions"),
    ({"ref_embeddings": np.ones((3, D))}, "80 reference labels for 3 reference images"),
    ({"groups": ["Male", "Female", "Nonbinary"]}, r"group\(s\) \['Nonbinary'\] have no reference images"),
    ({"groups": ["Male"]}, "at least 2 distinct groups"),
    ({"n_neighbors": 0}, "n_neighbors must be an integer >= 1"),
    ({"keep": [True, False]}, "one flag per query"),
    ({"queries": np.zeros((1, D))}, "all-zero embedding"),
    ({"queries": np.full((1, D), np.nan)}, "NaN"),
])
def test_bad_input_is_named(kwargs, message):
    refs, labels = planted_refs()
    args = {"queries": unit(C + G)[None], "augmented": np.stack([unit(C + G), unit(C - G)])[None],
            "ref_embeddings": refs, "ref_labels": labels}
    args.update(kwargs)
    with pytest.raises(VlmbiasError, match=message):
        bendvlm(args.pop("queries"), args.pop("augmented"), args.pop("ref_embeddings"), args.pop("ref_labels"), **args)


def test_a_query_inside_its_attribute_subspace_is_an_error():
    with pytest.raises(VlmbiasError, match="step 1 removed query 0 entirely"):
        bendvlm(G[None], np.stack([G, -G])[None], None, None, step2=False)


def test_augment_queries_rejects_empty_input():
    with pytest.raises(VlmbiasError, match="no query concepts"):
        augment_queries([])
    with pytest.raises(VlmbiasError, match="no group words for attribute 'age'"):
        augment_queries(["doctor"], "age")


def test_bendvlm_for_with_an_encoder(tiny_hf):
    from vlmbias.encoders.models import load_encoder

    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    queries = enc.encode_texts(["a photo of a doctor", "a photo of a nurse"])
    rng = np.random.default_rng(0)
    refs = unit(rng.normal(size=(30, queries.shape[1])))
    labels = np.array(["Male", "Female"] * 15)
    out = bendvlm_for(enc, queries, ["doctor", "nurse"], refs, labels, n_neighbors=15)
    assert out.shape == queries.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    for z in out:
        s = mean_sims(z, refs, labels)
        assert abs(s[0] - s[1]) < 1e-5
    np.testing.assert_array_equal(out, bendvlm_for(enc, queries, ["doctor", "nurse"], refs, labels, n_neighbors=15))
    with pytest.raises(VlmbiasError, match="one concept per query"):
        bendvlm_for(enc, queries, ["doctor"], refs, labels)


# ---------------------------------------------------------------- BendVLM on quality's texts

class _Words:
    """Texts -> vectors by keyword: one axis per concept, gender on axis G (+ for 'male'/'man', - for
    'female'/'woman'); a planted female lean on 'nurse' when the text names no gender."""
    AXES = ["nurse", "doctor", "chef", "G", "X"]

    def encode_texts(self, texts):
        out = np.zeros((len(texts), len(self.AXES)), np.float32)
        for i, t in enumerate(texts):
            words = t.split()
            for j, concept in enumerate(self.AXES[:3]):
                out[i, j] = concept in words
            male, female = bool({"male", "man"} & set(words)), bool({"female", "woman"} & set(words))
            out[i, 3] = male - female - (0.8 if "nurse" in words and not (male or female) else 0.0)
            if not out[i].any():
                out[i, 4] = 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _reference(folder):
    from vlmbias.io import write_npy, write_table

    g, x = np.eye(5)[3], np.eye(5)[4]
    emb = unit(np.stack([g + 0.3 * x] * 5 + [-g + 0.3 * x] * 5)).astype(np.float32)  # gender on G only
    folder.mkdir()
    write_npy(emb, str(folder / "reference.npy"))
    write_table(pd.DataFrame({"image_id": [f"r{i}" for i in range(10)], "gender": ["Male"] * 5 + ["Female"] * 5}),
                str(folder / "reference.parquet"))
    return {"bendvlm": {"reference": str(folder), "attributes": ["gender"], "n_neighbors": 5}}


def _world():
    """Held-out images: 2 male and 2 female nurses, 4 female chefs (whose gender lies further along G)."""
    n, c, g = np.eye(5)[0], np.eye(5)[2], np.eye(5)[3]
    emb = unit(np.stack([n + g] * 2 + [n - g] * 2 + [c - 1.2 * g] * 4)).astype(np.float32)
    corpus = pd.DataFrame({"concept": ["nurse"] * 4 + ["chef"] * 4, "path": "x",
                           "caption": ["a photo of a nurse"] * 4 + ["a photo of a chef"] * 4})
    labels = pd.DataFrame({"gender": ["Male"] * 2 + ["Female"] * 6})
    return emb, corpus, labels


def test_quality_applies_bendvlm_per_text(tmp_path):
    from vlmbias.mitigate.quality import TransformedText, evaluate

    bent = TransformedText(_Words(), _reference(tmp_path / "ref"))
    # an attribute-neutral text without a gender component is left as it is (identity-like)
    np.testing.assert_allclose(bent.encode_texts(["a photo of a doctor"]), _Words().encode_texts(["a photo of a doctor"]),
                               atol=1e-6)
    # the nurse caption's planted lean is removed: it becomes the nurse axis
    np.testing.assert_allclose(bent.encode_texts(["a photo of a nurse"])[0], np.eye(5)[0], atol=1e-6)
    emb, corpus, labels = _world()
    splits = {"nurse": "held_out", "chef": "fitting"}
    run = lambda enc, name: evaluate(enc, name, emb, labels, ["gender"], "a photo of a {}", corpus, 4, corpus_emb=emb,
                                     splits=splits).set_index(["metric", "split"])
    base, after = run(_Words(), "m"), run(bent, "m~bendvlm")
    # caption retrieval: the base's nurse caption ranks the female chefs above the male nurses
    # (precision@4 = 2/4); bent, its top 4 are the 4 nurses
    assert base.loc[("caption_precision@4", "held_out"), "value"] == pytest.approx(0.5)
    assert after.loc[("caption_precision@4", "held_out"), "value"] == pytest.approx(1.0)
    assert after.loc[("caption_precision@4", "fitting"), "value"] == pytest.approx(1.0)  # the chef caption: unbiased
    assert after.loc[("caption_recall@4", "held_out"), "value"] == 1.0
    # texts that name gender are kept: zero-shot prompts and attributed queries score as the base's
    for metric in ("zero_shot_accuracy", "attributed_query_share@4"):
        pd.testing.assert_frame_equal(after.loc[[metric]].drop(columns="model"), base.loc[[metric]].drop(columns="model"))
    # female nurse: 4 women of 4; male nurse: the 2 male nurses, then the 2 female nurses (similarity 0)
    assert after.loc[("attributed_query_share@4", "held_out"), "value"] == pytest.approx(6 / 8)
    assert after.loc[("zero_shot_accuracy", "all"), "value"] == 1.0


def test_quality_without_the_named_attribute_would_bend_attributed_queries(tmp_path):
    """The flag matters: the same 'a photo of a female nurse' not described as naming gender is bent."""
    from vlmbias.mitigate.quality import TransformedText

    bent = TransformedText(_Words(), _reference(tmp_path / "ref"))
    bent.describe(["a photo of a female nurse"], ["nurse"])
    np.testing.assert_allclose(bent.encode_texts(["a photo of a female nurse"])[0], np.eye(5)[0], atol=1e-6)
    bent.describe(["a photo of a female nurse"], ["nurse"], "gender")
    np.testing.assert_allclose(bent.encode_texts(["a photo of a female nurse"]),
                               _Words().encode_texts(["a photo of a female nurse"]), atol=1e-7)


def test_quality_with_bendvlm_on_a_real_encoder_over_gender_and_race(tiny_hf, tmp_path):
    """The workflow's case: a CLIPModel, BendVLM over gender then race (race words for augmentation),
    multi-word concepts; a method bending gender only leaves the gender prompts' accuracy as the base's."""
    from vlmbias.encoders.models import load_encoder
    from vlmbias.io import write_npy, write_table
    from vlmbias.encoders.projection import DEFAULT_GROUP_WORDS
    from vlmbias.mitigate.quality import TransformedText, evaluate

    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    d = enc.encode_texts(["x"]).shape[1]
    rng = np.random.default_rng(0)
    races = list(DEFAULT_GROUP_WORDS["race"])
    ref = pd.DataFrame({"image_id": [f"r{i}" for i in range(70)], "gender": ["Male", "Female"] * 35,
                        "race": races * 10})
    (tmp_path / "ref").mkdir()
    write_npy(unit(rng.normal(size=(70, d))).astype(np.float32), str(tmp_path / "ref/reference.npy"))
    write_table(ref, str(tmp_path / "ref/reference.parquet"))
    images = unit(rng.normal(size=(40, d))).astype(np.float32)
    labels = pd.DataFrame({"gender": ["Male", "Female"] * 20, "race": (races * 6)[:40]})
    splits = {"software engineer": "fitting", "domestic worker": "fitting", "CEO": "held_out"}
    run = lambda e, attrs: evaluate(e, "m", images, labels, attrs, "a photo of a {}", None, 10, splits=splits
                                    ).set_index(["metric", "attribute", "split"])["value"]
    spec = lambda attrs: {"bendvlm": {"reference": str(tmp_path / "ref"), "attributes": attrs, "n_neighbors": None,
                                      "global_prompts": True}}
    base = run(enc, ["gender", "race"])
    both = run(TransformedText(enc, spec(["gender", "race"])), ["gender", "race"])
    assert both.index.equals(base.index) and both.notna().all()
    assert ("attributed_query_share@10", "race", "held_out") in both.index
    gender_only = run(TransformedText(enc, spec(["gender"])), ["gender", "race"])
    for key in (("zero_shot_accuracy", "gender", "all"), ("attributed_query_share@10", "gender", "held_out")):
        assert gender_only[key] == base[key]  # texts that name gender are not bent for gender
