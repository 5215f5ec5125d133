import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.encoders.saner import apply_saner, load_saner
from vlmbias.mitigate.saner import (
    neutralize,
    resolve_spec,
    saner_corpus,
    train_saner,
    train_saner_from_captions,
)

D = 16
E = np.eye(D)
G = E[0]  # the planted gender direction: +G male, -G female
CONCEPTS = E[1:9]
HELDOUT = E[9]  # a concept the layer never sees in training
SPEC = {"epochs": 100, "batch_size": 16, "hidden": 64}


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def planted_world(seed=0):
    """Per concept, 2 captions with a planted lean (+-0.4 G), their male/female versions (+-G),
    and 4 images each (half male, half female) that share the caption's specific detail."""
    rng = np.random.default_rng(seed)
    neutral, variants, images = [], [], []
    for k, c in enumerate(CONCEPTS):
        lean = 0.4 if k % 2 == 0 else -0.4
        for _ in range(2):
            detail = 0.3 * rng.normal(size=D)
            for j in range(4):
                neutral.append(unit(c + lean * G + detail))
                variants.append([unit(c + G + detail), unit(c - G + detail)])
                images.append(unit(c + detail + (0.8 if j % 2 == 0 else -0.8) * G + 0.05 * rng.normal(size=D)))
    return np.array(neutral), np.array(variants), np.array(images)


def reference_images(concept, seed=1, n=30):
    rng = np.random.default_rng(seed)
    male = unit(concept + 0.8 * G + 0.2 * rng.normal(size=(n, D)))
    female = unit(concept - 0.8 * G + 0.2 * rng.normal(size=(n, D)))
    return male, female


def gap(q, male, female):
    return float((male @ q).mean() - (female @ q).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("saner") / "layer"
    neutral, variants, images = planted_world()
    meta = train_saner(neutral, variants, out, images=images, groups=["Male", "Female"], spec=SPEC)
    return meta, load_saner(out)


@pytest.mark.parametrize("concept", [CONCEPTS[0], HELDOUT], ids=["trained-concept", "heldout-concept"])
def test_neutral_query_with_a_planted_lean_is_neutralised(trained, concept):
    _, layer = trained
    male, female = reference_images(concept)
    q = unit(concept + 0.4 * G)  # "a photo of a doctor" that leans male
    before, after = gap(q, male, female), gap(layer(q[None])[0], male, female)
    assert before > 0.3
    assert abs(after) < 0.5 * before
    assert layer(q[None])[0] @ unit(concept) > 0.8  # still the same concept


@pytest.mark.parametrize("concept", [CONCEPTS[0], HELDOUT], ids=["trained-concept", "heldout-concept"])
def test_attributed_query_keeps_its_attribute(trained, concept):
    _, layer = trained
    male, female = reference_images(concept)
    for sign in (+1, -1):  # "a photo of a male doctor", "a photo of a female doctor"
        q = unit(concept + sign * G)
        z = layer(q[None])[0]
        assert sign * gap(z, male, female) > 0.3  # the ordering between male and female images is kept
        assert z @ q > 0.85


def test_training_log_and_files(trained):
    meta, layer = trained
    losses = meta["losses"]
    assert list(losses.columns) == ["epoch", "step_count", "loss", "deb", "recon", "cont", "seconds"]
    assert len(losses) == 100 and (losses["step_count"] == 4).all()
    assert losses["deb"].iloc[-1] < 0.25 * losses["deb"].iloc[0]
    assert losses["cont"].iloc[-1] < losses["cont"].iloc[0]
    out = meta["out_dir"]
    on_disk = json.loads(Path(out, "saner.json").read_text())
    assert on_disk["dim"] == D and on_disk["hidden"] == 64 and on_disk["groups"] == ["Male", "Female"]
    assert on_disk["steps"] == 400 and on_disk["spec"]["alpha"] == 1.0
    np.testing.assert_allclose(pd.read_csv(f"{out}/losses.csv")["loss"], losses["loss"], rtol=1e-6)
    q = unit(np.random.default_rng(3).normal(size=(5, D)))
    out_q = apply_saner(q, out)
    assert out_q.dtype == np.float32 and out_q.shape == (5, D)
    np.testing.assert_allclose(np.linalg.norm(out_q, axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(out_q, layer(q))


def test_untrained_layer_is_the_identity_and_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    neutral, variants, images = planted_world()
    spec = {**SPEC, "max_steps": 3}
    train_saner(neutral, variants, tmp_path / "a", images=images, spec=spec)
    train_saner(neutral, variants, tmp_path / "b", images=images, spec=spec)
    assert (tmp_path / "a/saner.safetensors").read_bytes() == (tmp_path / "b/saner.safetensors").read_bytes()
    w = load_file(str(tmp_path / "a/saner.safetensors"))
    assert set(w) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    train_saner(neutral, variants, tmp_path / "c", images=images, spec={**spec, "max_steps": 1, "lr": 1e-30})
    q = unit(np.random.default_rng(0).normal(size=(4, D)))
    np.testing.assert_allclose(apply_saner(q, tmp_path / "c"), q, atol=1e-6)  # zero-initialised residual


def test_neutralize_known_answers():
    assert neutralize("a photo of a man cooking") == (
        "a photo of a person cooking", {"Male": "a photo of a man cooking", "Female": "a photo of a woman cooking"})
    assert neutralize("A male nurse with his dog") == (
        "A nurse with their dog", {"Male": "A male nurse with his dog", "Female": "A female nurse with her dog"})
    assert neutralize("Women playing football")[0] == "People playing football"
    assert neutralize("a photo of a doctor") is None
    assert neutralize("a photo of a manager") is None  # whole words only
    corpus = saner_corpus(["a bowl of fruit", "a girl reading", "she is a doctor"])
    assert corpus["row"].tolist() == [1, 2]
    assert corpus["neutral"].tolist() == ["a child reading", "they is a doctor"]
    assert corpus["variant_Female"].tolist() == ["a girl reading", "she is a doctor"]


def test_caption_input_errors():
    with pytest.raises(VlmbiasError, match="caption list is empty"):
        saner_corpus([])
    with pytest.raises(VlmbiasError, match="none of the 2 captions names an attribute"):
        saner_corpus(["a dog", "a photo of a doctor"])
    with pytest.raises(VlmbiasError, match="captions must be strings"):
        saner_corpus([None])
    with pytest.raises(VlmbiasError, match="at least 2 groups"):
        neutralize("a man", [("person", {"Male": "man"})])


@pytest.mark.parametrize("change, message", [
    ({"neutral": np.ones(D)}, "neutral caption embeddings must have 2 dimensions"),
    ({"neutral": np.ones((0, D))}, "no neutral caption embeddings"),
    ({"variants": np.ones((3, 2, D))}, "given for 3 captions, there are 64"),
    ({"variants": np.ones((64, 1, D))}, "at least 2 attribute-specific versions"),
    ({"variants": np.ones((64, 2, D + 1))}, "embedding size 17, expected 16"),
    ({"images": None}, "needs the image embedding of each caption"),
    ({"images": np.ones((5, D))}, "5 image embeddings for 64 captions"),
    ({"groups": ["Male"]}, "must name the 2 attribute-specific versions"),
    ({"keep": np.zeros((2, D))}, "keep embeddings contains an all-zero embedding"),
    ({"spec": {"epochs": 0}}, "'epochs' must be an integer >= 1"),
    ({"spec": {"alpha": 0}}, "'alpha'"),
    ({"spec": {"temperature": 1}}, r"unknown SANER spec key\(s\) \['temperature'\]"),
])
def test_bad_training_input_is_named(tmp_path, change, message):
    neutral, variants, images = planted_world()
    args = {"neutral": neutral, "variants": variants, "images": images, **change}
    with pytest.raises(VlmbiasError, match=message):
        train_saner(args.pop("neutral"), args.pop("variants"), tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_no_images_needed_without_the_contrastive_term(tmp_path):
    neutral, variants, _ = planted_world()
    meta = train_saner(neutral, variants, tmp_path / "x", spec={**SPEC, "gamma": 0, "max_steps": 2})
    assert "cont" not in meta["losses"].columns
    assert resolve_spec(None)["hidden"] is None


def test_load_errors(tmp_path, trained):
    with pytest.raises(VlmbiasError, match="not a trained SANER layer directory"):
        load_saner(tmp_path)
    with pytest.raises(VlmbiasError, match="embedding size 3, expected 16"):
        trained[1](np.ones((1, 3)))


def test_from_captions_with_an_encoder(tiny_hf, tmp_path):
    from vlmbias.encoders.models import load_encoder

    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    captions = ["a photo of a man cooking", "a photo of a woman reading", "a bowl of fruit", "a male nurse"]
    images = unit(np.random.default_rng(0).normal(size=(4, 16)))
    out = train_saner_from_captions(enc, captions, images, tmp_path / "s", keep_captions=["a bowl of fruit"],
                                    spec={"epochs": 2, "batch_size": 2})
    assert out["corpus"]["row"].tolist() == [0, 1, 3] and out["n_keep"] == 1 and out["steps"] == 4
    q = enc.encode_texts(["a photo of a doctor"])
    assert apply_saner(q, tmp_path / "s").shape == (1, 16)
    with pytest.raises(VlmbiasError, match="one image embedding per caption"):
        train_saner_from_captions(enc, captions, images[:2], tmp_path / "t")
