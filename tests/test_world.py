"""The calibration world: determinism, the FairFace layout, the planted table realised in the corpus,
the search stand-in, the offline tokenizer and a trained model that loads like a hub model."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit.data import build_manifest
from vlmbias.world.generate import CLASSES, generate_world, load_bias_table, load_corpus, resolve_spec, search

SPEC = {
    "seed": 3, "image_size": 16, "images_per_concept": 40, "group_images": 60, "test_per_cell": 4,
    "heldout_fraction": 0.1,
    "concepts": {
        "doctor": {"names": {"en": "a doctor", "zh": "医生"}, "planted": {"gender": {"Male": 0.8}},
                   "by_lang": {"zh": {"race": {"East Asian": 0.75}}}},
        "nurse": {"names": {"en": "a nurse"}, "planted": {"gender": {"Female": 0.9}}},
        "chef": {"names": {"en": "a chef"}, "family": "control"},
    },
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(SPEC, out)
    return out


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "world_spec.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_spec_same_world_and_seed_changes_it(world, tmp_path):
    again = tmp_path / "again"
    generate_world(SPEC, again)
    assert _digest(again) == _digest(world)
    other = tmp_path / "other"
    generate_world({**SPEC, "seed": 4}, other)
    assert _digest(other) != _digest(world)


def test_test_split_is_fairface_layout_balanced_and_evidence_free(world):
    labels = pd.read_csv(world / "fairface" / "fairface_label_val.csv")
    assert list(labels.columns) == ["file", "age", "gender", "race", "service_test"]
    manifest, dist, missing = build_manifest({"type": "fairface", "root": str(world / "fairface")})
    assert missing.empty and len(manifest) == len(labels) == 2 * 7 * SPEC["test_per_cell"]
    cells = labels.groupby(["gender", "race"]).size()
    assert len(cells) == 14 and (cells == SPEC["test_per_cell"]).all()
    assert set(labels["age"]) <= set(CLASSES["age"])
    # evidence marks exist only in the corpus; the test split carries none by construction, and its
    # images are distinct files from the corpus'
    corpus = load_corpus(world)
    assert corpus["evidence"].any()
    assert not set(labels["file"]) & set(corpus["path"])


def test_corpus_realises_the_planted_table(world):
    corpus = load_corpus(world)
    table = load_bias_table(world)
    for (concept, lang), part in corpus[corpus["concept"].notna()].groupby(["concept", "lang"]):
        planted = table[(table.concept == concept) & (table.lang == lang)]
        for attr in ("gender", "race"):
            want = planted[planted.attribute == attr].set_index("class")["planted"]
            got = part[attr].value_counts(normalize=True).reindex(want.index, fill_value=0)
            # quotas per split round each cell to whole images: at most 2 images off per class
            assert np.abs(got - want).max() <= 2 / len(part) + 1e-9, (concept, lang, attr)
    doctor_zh = corpus[(corpus.concept == "doctor") & (corpus.lang == "zh")]
    assert (doctor_zh["race"] == "East Asian").mean() == pytest.approx(0.75, abs=0.05)
    assert (corpus[(corpus.concept == "doctor") & (corpus.lang == "en")]["race"] == "East Asian").mean() < 0.3
    chef = corpus[corpus.concept == "chef"]
    assert (chef["gender"] == "Male").mean() == pytest.approx(0.5, abs=0.03)
    # the filler brings the corpus as a whole back to the base (uniform) distribution
    assert (corpus["gender"] == "Male").mean() == pytest.approx(0.5, abs=0.02)
    evidence = corpus.loc[corpus.concept.notna(), "evidence"].mean()
    assert evidence == pytest.approx(resolve_spec(SPEC)["evidence_rate"], abs=0.05)
    assert set(corpus["lang"]) == {"en", "zh"}


def test_search_keeps_the_corpus_skew_in_every_language(world):
    en = search(world, "a doctor", limit=1000)
    assert set(en["lang"]) == {"en"} and (en["concept"] == "doctor").all()
    assert list(en["rank"]) == list(range(1, len(en) + 1))
    assert (en["gender"] == "Male").mean() == pytest.approx(0.8, abs=0.05)
    zh = search(world, "医生", limit=1000)
    assert set(zh["lang"]) == {"zh"} and (zh["race"] == "East Asian").mean() == pytest.approx(0.75, abs=0.05)
    assert len(search(world, "Doctor", limit=5)) == 5  # articles and case ignored, the limit kept
    assert search(world, "doctor", limit=10, seed=1)["image_id"].tolist() != en["image_id"].head(10).tolist()
    with pytest.raises(VlmbiasError, match="no concept matches 'plumber'"):
        search(world, "plumber", limit=5)


@pytest.mark.parametrize("bad, message", [
    ({"colour": 1}, "unknown key"),
    ({"concepts": {}}, "'concepts' is empty"),
    ({"concepts": {"x": {"names": {"en": "x"}, "planted": {"gender": {"Male": 1.2}}}}}, "lie in"),
    ({"concepts": {"x": {"names": {"en": "x"}, "planted": {"gender": {"Man": 0.8}}}}}, "unknown gender class"),
    ({"concepts": {"x": {"names": {"fr": "x"}}}}, "no caption templates for language 'fr'"),
])
def test_bad_spec_names_the_problem(bad, message, tmp_path):
    with pytest.raises(VlmbiasError, match=message):
        generate_world({**SPEC, **bad}, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_tokenizer_round_trips_every_script(tmp_path):
    from vlmbias.world.tokenizer import build_tokenizer, check_round_trip

    texts = ["a photo of a doctor", "一位医生的照片", "مدير تنفيذي في العمل", "a Latino/Hispanic person"] * 5
    tok = build_tokenizer(texts, tmp_path, n_merges=50, max_length=32)
    check_round_trip(tok, texts)
    # Chinese merges stay within one character, so every wording of a name shares its tokens
    pieces = tok.tokenize("一位医生的照片")
    assert all(len(p.replace("</w>", "")) <= 3 for p in pieces)  # bytes shown as up to 3 symbols per char


def test_trained_world_model_loads_as_a_hub_model(world, tmp_path):
    from transformers import CLIPModel

    from vlmbias.audit.models import load_encoder
    from vlmbias.world.model import train_world_model

    small = {"max_steps": 3, "batch_size": 32, "bpe_merges": 30, "projection_dim": 16,
             "vision": {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32, "patch_size": 4},
             "text": {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32}}
    out = tmp_path / "m"
    train_world_model(world, small, out, threads=1)
    assert (out / "model.safetensors").is_file() and (out / "train_log.csv").is_file()
    assert isinstance(CLIPModel.from_pretrained(out), CLIPModel)
    enc = load_encoder({"backend": "hf", "name": str(out)})
    emb = enc.encode_texts(["a doctor", "医生"])
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    again = tmp_path / "m2"
    train_world_model(world, small, again, threads=1)  # seeded: the same weights
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    with pytest.raises(VlmbiasError, match="unknown key"):
        train_world_model(world, {"epoch": 3}, tmp_path / "bad")
