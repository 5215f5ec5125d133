import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlmbias import VlmbiasError
from vlmbias.audit.embed import embed_image_files
from vlmbias.encoders.models import features, load_encoder, load_prompt_encoder
from vlmbias.encoders.prompt_array import load_prompts
from vlmbias.mitigate.prompt_array import resolve_spec, train_prompt_array
from vlmbias.training import load_pixels

FAST = {"epochs": 40, "lr": 1e-2, "head_lr": 1e-2}
QUERIES = ["a photo of a doctor", "a photo of a nurse"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """32 images: 2 concepts (background) x 2 genders (a bright or dark bar) x 8."""
    root = tmp_path_factory.mktemp("pa_images")
    rng = np.random.default_rng(0)
    rows = []
    for ci, concept in enumerate(["doctor", "nurse"]):
        for gi, gender in enumerate(["Male", "Female"]):
            for j in range(8):
                img = np.full((32, 32, 3), 40 + 150 * ci, np.uint8)
                img[:, : 8 * (1 + gi)] = 230 if gi == 0 else 20
                img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
                path = root / f"{concept}_{gi}_{j}.png"
                Image.fromarray(img).save(path)
                rows.append({"image_id": path.name, "path": str(path), "caption": f"a photo of a {concept}",
                             "concept": concept, "gender": gender})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def planted(tiny_hf, table, tmp_path_factory):
    """The tiny CLIP with a planted male lean: every text embedding gains a component along the
    direction from the mean female to the mean male image embedding."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(tiny_hf)).eval()
    tok, proc = AutoTokenizer.from_pretrained(str(tiny_hf)), CLIPImageProcessor.from_pretrained(str(tiny_hf))
    with torch.no_grad():
        img = torch.nn.functional.normalize(
            features(model.get_image_features(pixel_values=load_pixels(table["path"].tolist(), proc))), dim=-1)
        male = torch.tensor((table["gender"] == "Male").to_numpy())
        g = img[male].mean(0) - img[~male].mean(0)
        g = g / g.norm()
        toks = tok([*QUERIES, "a photo of a person"], padding=True, return_tensors="pt")
        pooled = model.text_model(**toks).pooler_output
        w = pooled.mean(0) / (pooled.mean(0) @ pooled.mean(0))
        norm = features(model.get_text_features(**toks)).norm(dim=-1).mean()
        model.text_projection.weight += 0.6 * norm * torch.outer(g, w)
    return save_clip(tmp_path_factory.mktemp("planted_clip"), model, tok, proc)


def save_clip(out, model, tok, proc) -> str:
    for part in (model, tok, proc):
        part.save_pretrained(out)
    return str(out)


def gaps(encoder, images, male):
    s = images @ encoder.encode_texts(QUERIES).T
    return s[male].mean(0) - s[~male].mean(0), s


@pytest.fixture(scope="module")
def measured(planted, table, tmp_path_factory):
    """Base and prompt-array retrieval on the planted model, for two trainings: the full objective
    and the adversary alone (contrastive_weight 0)."""
    base = load_encoder({"backend": "hf", "name": planted})
    images, _, _ = embed_image_files(base, table["path"].tolist(), num_workers=0, progress=False)
    male = (table["gender"] == "Male").to_numpy()
    out = {"base": gaps(base, images, male), "male": male}
    for name, extra in (("full", {}), ("adversary_only", {"contrastive_weight": 0.0})):
        d = tmp_path_factory.mktemp(name) / "prompts"
        meta = train_prompt_array(planted, table, {**FAST, **extra}, d, threads=1, progress=False)
        out[name] = (*gaps(load_prompt_encoder(planted, d), images, male), meta)
    return out


def test_planted_lean_is_there_before(measured):
    assert (measured["base"][0] > 0.1).all()


def test_adversary_alone_removes_the_planted_lean(measured):
    before, after = measured["base"][0], measured["adversary_only"][0]
    assert (np.abs(after) < 0.4 * before).all()


def test_full_objective_reduces_the_lean_and_keeps_retrieval(measured, table):
    before, s0 = measured["base"]
    after, s1, meta = measured["full"]
    assert np.abs(after).mean() < 0.5 * np.abs(before).mean()
    nurse = (table["concept"] == "nurse").to_numpy()
    acc = lambda s: (s.argmax(1) == nurse).mean()
    assert acc(s1) >= acc(s0)  # the contrastive term keeps (here: improves) concept retrieval
    losses = meta["losses"]
    assert list(losses.columns) == ["epoch", "step_count", "loss", "contrastive", "adv_gender", "seconds"]
    assert losses["contrastive"].iloc[-1] < losses["contrastive"].iloc[0]


def test_saved_files_and_metadata(measured):
    meta = measured["full"][2]
    out = meta["out_dir"]
    tensors = load_file(f"{out}/prompts.safetensors")
    assert list(tensors) == ["prompts"] and tensors["prompts"].shape == (2, 32)
    on_disk = json.loads(Path(out, "prompt_array.json").read_text())
    assert on_disk["n_tokens"] == 2 and on_disk["image_embeddings_unchanged"] is True
    assert on_disk["adv_queries"] == QUERIES and on_disk["classes"] == {"gender": ["Female", "Male"]}
    assert on_disk["steps"] == 80
    # no model weights are written: the base model stays frozen
    assert sorted(p.name for p in Path(out).iterdir()) == ["losses.csv", "prompt_array.json", "prompts.safetensors"]


def test_prompted_encoding_pools_the_right_token(planted, measured):
    out = measured["full"][2]["out_dir"]
    enc = load_prompt_encoder(planted, out)
    alone = enc.encode_texts(["a"])
    batched = enc.encode_texts(["a", "a photo of a very long caption that needs padding"])
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)  # padding and prompts do not move the pooled token
    plain = load_encoder({"backend": "hf", "name": planted}).encode_texts(["a"])
    assert np.abs(alone - plain).max() > 1e-3  # the prompts are used
    np.testing.assert_array_equal(load_prompt_encoder(planted, out).encode_texts(["a"]), alone)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1, rtol=1e-5)
    # images are encoded by the unchanged base model
    px = torch.zeros(1, 3, 32, 32)
    np.testing.assert_array_equal(enc.encode_images(px), load_encoder({"backend": "hf", "name": planted}).encode_images(px))


def test_training_is_deterministic(planted, table, tmp_path):
    spec = {**FAST, "max_steps": 3}
    for name in ("a", "b"):
        train_prompt_array(planted, table, spec, tmp_path / name, threads=1, progress=False)
    assert (tmp_path / "a/prompts.safetensors").read_bytes() == (tmp_path / "b/prompts.safetensors").read_bytes()
    init = load_file(str(tmp_path / "a/prompts.safetensors"))["prompts"]
    assert init.shape == (2, 32)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.iloc[0:0], "training table is empty"),
    (lambda t: t.drop(columns="gender"), r"lacks column\(s\) \['gender'\]"),
    (lambda t: t.drop(columns="concept"), r"lacks column\(s\) \['concept'\]"),
    (lambda t: t.assign(gender="Male"), "single class"),
    (lambda t: t.assign(caption=" "), "empty value"),
])
def test_bad_tables_are_named(planted, table, tmp_path, change, message):
    with pytest.raises(VlmbiasError, match=message):
        train_prompt_array(planted, change(table), FAST, tmp_path / "x", threads=1, progress=False)


def test_adv_queries_replace_the_concept_column(planted, table, tmp_path):
    meta = train_prompt_array(planted, table.drop(columns="concept"), {**FAST, "max_steps": 1,
                              "adv_queries": ["a photo of a person"]}, tmp_path / "x", threads=1, progress=False)
    assert meta["adv_queries"] == ["a photo of a person"]


@pytest.mark.parametrize("spec, message", [
    ({"prompts": 3}, r"unknown prompt-array spec key\(s\) \['prompts'\]"),
    ({"n_tokens": 0}, "'n_tokens' must be an integer >= 1"),
    ({"init": "ones"}, "'init' must be one of"),
    ({"adv_queries": []}, "'adv_queries' must be null or a non-empty list"),
    ({"adv_attributes": []}, "'adv_attributes' must be a non-empty list"),
    ({"neutral_template": "a photo of a {}"}, "must contain '{concept}'"),
])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(VlmbiasError, match=message):
        resolve_spec(spec)


def test_too_many_prompt_tokens(planted, table, tmp_path):
    with pytest.raises(VlmbiasError, match="62 prompt tokens leave no room for text in 64 positions"):
        train_prompt_array(planted, table, {"n_tokens": 62}, tmp_path / "x", threads=1, progress=False)


def test_loading_errors(planted, tmp_path):
    with pytest.raises(VlmbiasError, match="not a trained prompt-array directory"):
        load_prompts(tmp_path)
    save_file({"prompts": torch.zeros(2, 8)}, str(tmp_path / "prompts.safetensors"))
    (tmp_path / "prompt_array.json").write_text("{}")
    with pytest.raises(VlmbiasError, match=r"shape \(2, 8\) do not fit this model's text tower \(hidden size 32\)"):
        load_prompt_encoder(planted, tmp_path)


def test_a_model_spec_with_prompts_loads_the_prompted_encoder(planted, measured):
    """The workflow's `<base>~<prompt-array method>` model: `prompts` in the model spec."""
    out = measured["full"][2]["out_dir"]
    enc = load_encoder({"backend": "hf", "name": planted, "prompts": out})
    np.testing.assert_array_equal(enc.encode_texts(QUERIES), load_prompt_encoder(planted, out).encode_texts(QUERIES))
    with pytest.raises(VlmbiasError, match="prompt array needs a plain 'hf' base model"):
        load_encoder({"backend": "hf", "name": planted, "prompts": out, "adapter": out})


# ---------------------------------------------------------------- explicitly attributed queries

ATTRIBUTED = pd.DataFrame({"concept": ["doctor", "doctor", "nurse", "nurse"], "class": ["Male", "Female"] * 2,
                           "text": ["a photo of a male doctor", "a photo of a female doctor",
                                    "a photo of a male nurse", "a photo of a female nurse"]})


@pytest.fixture(scope="module")
def attributed(tiny_hf, table, tmp_path_factory):
    """The tiny CLIP with gender words planted: along the direction g from the mean female to the
    mean male image, "male ..." texts get +1.5, "female ..." texts -1.5 (x the mean text norm), and
    the neutral queries a male lean of +0.6, so that there is a bias for the prompt array to remove."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(tiny_hf)).eval()
    tok, proc = AutoTokenizer.from_pretrained(str(tiny_hf)), CLIPImageProcessor.from_pretrained(str(tiny_hf))
    texts = [*ATTRIBUTED["text"], *QUERIES, "a photo of a person"]
    target = torch.tensor([1.5, -1.5, 1.5, -1.5, 0.6, 0.6, 0.6])
    with torch.no_grad():
        img = torch.nn.functional.normalize(
            features(model.get_image_features(pixel_values=load_pixels(table["path"].tolist(), proc))), dim=-1)
        male = torch.tensor((table["gender"] == "Male").to_numpy())
        g = img[male].mean(0) - img[~male].mean(0)
        g = g / g.norm()
        toks = tok(texts, padding=True, return_tensors="pt")
        pooled = model.text_model(**toks).pooler_output                 # [7, hidden]
        w = torch.linalg.pinv(pooled) @ target                          # pooled @ w = target (min norm)
        norm = features(model.get_text_features(**toks)).norm(dim=-1).mean()
        model.text_projection.weight += norm * torch.outer(g, w)
    return save_clip(tmp_path_factory.mktemp("attributed_clip"), model, tok, proc)


def test_prompt_array_keeps_explicitly_attributed_queries(attributed, table, tmp_path):
    """Measured as quality measures it (quality.attributed_hits, the encoder the workflow gives the
    `<base>~prompt-array` model): the named gender's share of each attributed query's top 8."""
    from vlmbias.mitigate.quality import attributed_hits

    base = load_encoder({"backend": "hf", "name": attributed})
    images, _, _ = embed_image_files(base, table["path"].tolist(), num_workers=0, progress=False)
    male = (table["gender"] == "Male").to_numpy()
    share = lambda enc: np.array([h.mean() for h in attributed_hits(enc, images, table["gender"], ATTRIBUTED, 8,
                                                                     "gender")])

    def lean(enc):  # mean similarity of the neutral queries to male minus female images
        s = images @ enc.encode_texts(QUERIES).T
        return s[male].mean(0) - s[~male].mean(0)

    before = share(base)
    assert (before == 1.0).all()  # the plant: each attributed query's top 8 is all of the named gender
    assert (lean(base) > 0.1).all()
    train_prompt_array(attributed, table, FAST, tmp_path / "prompts", threads=1, progress=False)
    prompted = load_encoder({"backend": "hf", "name": attributed, "prompts": str(tmp_path / "prompts")})
    # the array moved the neutral queries' gender lean (here past parity on one of them: 5 epochs, 2 tokens)
    assert np.abs(lean(prompted) - lean(base)).max() > 0.2
    after = share(prompted)
    assert (after >= 0.75).all(), after  # and still retrieves the named gender for attributed ones
