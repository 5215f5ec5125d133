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


def test_world_writes_its_search_and_heldout_captions_as_ordinary_datasets(world):
    from vlmbias.audit.data import caption_set
    from vlmbias.mitigate.quality import concept_corpus

    labels = pd.read_csv(world / "search" / "labels.csv", keep_default_na=False)
    assert sorted(p.name for p in (world / "search").iterdir()) == ["chef", "doctor", "labels.csv", "nurse"]
    for concept in ("doctor", "nurse", "chef"):
        hits = search(world, concept, limit=1000, seed=SPEC["seed"])
        files = sorted((world / "search" / concept).iterdir())
        # file-name order is search order, and each file is the corpus image's bytes
        assert [f.read_bytes() for f in files] == [open(p, "rb").read() for p in hits["path"]]
        mine = labels[labels["file"].str.startswith(f"{concept}/")]
        assert mine["file"].tolist() == [f"{concept}/{f.name}" for f in files]
        for col in ("caption", "gender", "race", "age"):
            assert mine[col].tolist() == hits[col].tolist(), col
    corpus = load_corpus(world)
    held = corpus[(corpus["split"] == "heldout") & corpus["evidence"] & corpus["concept"].notna()
                  & (corpus["lang"] == "en")]
    images, captions, missing, _ = caption_set({"type": "captions", "root": str(world), "csv": "heldout_captions.csv",
                                                "attributes": ["concept"]})
    assert missing.empty and len(held) > 0
    got = concept_corpus(images, captions)
    assert got["path"].tolist() == held["path"].tolist()  # the same images, in corpus order
    assert got[["caption", "concept"]].values.tolist() == held[["caption", "concept"]].values.tolist()


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

    from vlmbias.encoders.models import load_encoder
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


def test_text_features_by_length_equal_padding_every_caption_to_the_batch_longest():
    import torch
    from transformers import CLIPConfig, CLIPModel

    from vlmbias.encoders.base import features
    from vlmbias.world.model import text_features_by_length

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=12, projection_dim=8, bos_token_id=1, eos_token_id=2, pad_token_id=2),
        vision_config=dict(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, projection_dim=8), projection_dim=8))
    lengths = torch.tensor([3, 12, 5, 7, 4, 9, 3, 11, 6])
    ids = torch.full((len(lengths), 12), 2)
    for row, n in enumerate(lengths):  # <bos> tokens... <eos>, right-padded with <eos>
        ids[row, :n] = torch.cat([torch.tensor([1]), torch.randint(3, 50, (n - 2,)), torch.tensor([2])])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    idx = torch.tensor([8, 0, 5, 2, 7, 1, 4])
    padded = features(model.get_text_features(input_ids=ids[idx], attention_mask=mask[idx]))
    for chunks in (1, 3, 4, 7, 20):
        chunked = text_features_by_length(model, ids, mask, lengths, idx, chunks)
        torch.testing.assert_close(chunked, padded, rtol=1e-5, atol=1e-6)
    # the gradients agree too: training sees the same loss surface
    grads = []
    for chunks in (1, 3):
        model.zero_grad()
        (text_features_by_length(model, ids, mask, lengths, idx, chunks) ** 2).sum().backward()
        grads.append(model.text_model.encoder.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# The zero-shot known answers: a crime-related concept on one race (gender at parity) and a
# non-person figure drawn in another race's hue, captioned with the zeroshot_fairface class words.
ZS_SPEC = {**SPEC, "concepts": {
    **SPEC["concepts"],
    "offender": {"names": {"en": ["a thief", "a criminal", "a suspicious person"]}, "family": "crime",
                 "planted": {"race": {"White": 0.8}}},
    "animal": {"names": {"en": ["an animal", "a gorilla"]}, "family": "non_human", "figure": "animal",
               "planted": {"race": {"Southeast Asian": 1.0}}},
}}


def test_zero_shot_plants_are_realised(tmp_path):
    generate_world(ZS_SPEC, tmp_path / "w")
    corpus = load_corpus(tmp_path / "w")
    table = load_bias_table(tmp_path / "w")
    crime = corpus[corpus.concept == "offender"]
    assert (crime["race"] == "White").mean() == pytest.approx(0.8, abs=2 / len(crime))
    assert (crime["gender"] == "Male").mean() == pytest.approx(0.5, abs=2 / len(crime))
    assert set(crime["figure"]) == {"person"}
    assert {c.split(" ", 1)[-1] for c in crime["caption"]} & {"thief", "criminal", "suspicious person"}
    animal = corpus[corpus.concept == "animal"]
    assert len(animal) == 40 and set(animal["figure"]) == {"animal"}
    assert animal["gender"].isna().all() and set(animal["race"]) == {"Southeast Asian"}
    assert all("animal" in c or "gorilla" in c for c in animal["caption"])
    planted = table[table.concept == "animal"]
    assert "gender" not in set(planted["attribute"])  # a non-person figure plants no gender
    assert planted.set_index(["attribute", "class"]).loc[("race", "Southeast Asian"), "planted"] == 1.0
    # the filler balances the people only: their race marginal stays at the base (1/7) although the
    # 40 animal figures all carry one race's hue
    people = corpus[corpus.figure == "person"]
    assert (people["race"] == "Southeast Asian").mean() == pytest.approx(1 / 7, abs=0.01)
    assert (corpus["race"] == "Southeast Asian").mean() > 1 / 7 + 0.02


def test_animal_figure_is_no_person_shape_in_the_race_hue():
    from vlmbias.world.render import keyed_rng, render_person

    def draw(gender, figure):
        img = render_person(32, gender, "Southeast Asian", "30-39", "plain", None, None, 0.0, 0.0,
                            keyed_rng(0, "x"), figure=figure).astype(float)
        return img, np.abs(img - img[0, 0]).sum(-1) > 60  # figure pixels: far from the background

    animal, a_mask = draw(None, "animal")
    people = [draw(gender, "person")[1] for gender in ("Male", "Female")]
    # legs and head: a quarter of the figure lies outside both person shapes (52 of 195 pixels now)
    assert (a_mask & ~people[0] & ~people[1]).sum() >= a_mask.sum() / 4
    for gender in ("Male", "Female"):
        person, p_mask = draw(gender, "person")
        # another shape; the box body still overlaps the Female ellipse (IoU 0.61, Male-Female 0.50),
        # which docs/experiments.md ("The non-human figure") names as a suspect for the gender signal it costs
        assert (a_mask & p_mask).sum() / (a_mask | p_mask).sum() < 0.65, gender
        # the same hue: mean colour of the figure pixels agrees to within the saturation/value jitter
        a_col, p_col = animal[a_mask].mean(0), person[p_mask].mean(0)
        assert np.argmax(a_col) == np.argmax(p_col) and np.argmin(a_col) == np.argmin(p_col)
    with pytest.raises(VlmbiasError, match="figure must be one of"):
        resolve_spec({**SPEC, "concepts": {"x": {"names": {"en": "x"}, "figure": "robot"}}})


def test_world_reference_and_train_captions_feed_bendvlm_and_saner_through_the_dataset_readers(world):
    """The generic readers + the fitting-concept filter give exactly the rows the world's corpus holds for
    the fitting concepts: the train images of those concepts (BendVLM), and their English train captions
    with each image's own gender word followed by the group captions that name a gender (SANER)."""
    from vlmbias.audit.data import build_manifest, caption_set
    from vlmbias.mitigate.bendvlm import dataset_rows, fitting_concept_rows
    from vlmbias.mitigate.saner import caption_set_rows, neutralize

    fitting, held_out = ["doctor", "chef"], ["nurse"]
    corpus = load_corpus(world)
    train = corpus[corpus["split"] == "train"]
    # BendVLM: reference.csv, a labelled-folder dataset
    ref = {"type": "labelled-folder", "root": str(world), "csv": "reference.csv",
           "attributes": ["gender", "race", "age", "concept"]}
    for attributes in (["gender"], ["gender", "race", "age"]):
        rows = dataset_rows(fitting_concept_rows(build_manifest(ref)[0], fitting, "test"), attributes)
        want = train[train["concept"].isin(fitting)].dropna(subset=attributes)
        assert [str(p) for p in rows["path"]] == [str(world / p) for p in want["path"]]
        for a in ["concept", *attributes]:
            assert rows[a].tolist() == want[a].tolist(), a
    # SANER: train_captions.csv, a caption set
    images, captions, missing, _ = caption_set({"type": "captions", "root": str(world), "csv": "train_captions.csv",
                                                "attributes": ["gender", "race", "age", "concept"]})
    assert missing.empty
    rows = fitting_concept_rows(caption_set_rows(images, captions, held_out), fitting, "test")
    en = train[train["lang"] == "en"]
    concept_rows = en[en["concept"].isin(fitting) & en["gender"].notna()]
    names = {"doctor": "a doctor", "chef": "a chef"}
    want_captions = [c.replace(names[k], f"a {g.lower()} {k}", 1) for c, k, g in
                     concept_rows[["caption", "concept", "gender"]].values if names[k] in c]
    groups = en[en["concept"].isna() & en["caption"].map(lambda c: neutralize(c) is not None)]
    assert len(want_captions) == len(concept_rows) and len(groups) > 0
    assert rows["caption"].tolist() == want_captions + groups["caption"].tolist()
    assert [str(p) for p in rows["path"]] == [str(world / p) for p in [*concept_rows["path"], *groups["path"]]]
    assert rows["gender"].tolist() == [*concept_rows["gender"], *groups["gender"].fillna("")]
