import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmbias import VlmbiasError
from vlmbias.encoders.models import load_encoder
from vlmbias.io import run_cli, write_table
from vlmbias.mitigate.finetune import (
    age_midpoint,
    finetune,
    grad_reverse,
    inverse_frequency_weights,
    main,
    resolve_spec,
    target_regex,
)

# fast, learnable settings for the tiny model (the thesis defaults would barely move in a few steps)
FAST = {"lr": 1e-2, "epochs": 5, "lora_dropout": 0.0, "seed": 0}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """16 images: 2 concepts x 2 genders x 2 races x 2 ages; colour keyed to concept, bar to gender/race."""
    root = tmp_path_factory.mktemp("ft_images")
    rng = np.random.default_rng(0)
    rows = []
    for ci, concept in enumerate(["doctor", "nurse"]):
        for gi, gender in enumerate(["Male", "Female"]):
            for ri, race in enumerate(["Black", "White"]):
                for ai, age in enumerate(["20-29", "more than 70"]):
                    img = np.full((32, 32, 3), 40 + 150 * ci, np.uint8)
                    img[:, : 8 * (1 + gi)] = 30 + 200 * ri
                    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
                    path = root / f"{concept}_{gi}{ri}{ai}.png"
                    Image.fromarray(img).save(path)
                    rows.append({"image_id": path.name, "path": str(path), "caption": f"a photo of a {concept}",
                                 "concept": concept, "gender": gender, "race": race, "age": age})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def trained(tiny_hf, table, tmp_path_factory):
    """One training run per objective, shared by the tests below."""
    out, root = {}, tmp_path_factory.mktemp("ft_out")
    for obj, towers in (("thesis", ["text"]), ("contrastive", ["text"]), ("adversarial", ["text", "vision"])):
        meta = finetune(str(tiny_hf), table, {**FAST, "objective": obj, "towers": towers}, root / obj,
                        progress=False)
        out[obj] = meta
    return out


@pytest.mark.parametrize("objective", ["thesis", "contrastive", "adversarial"])
def test_each_objective_learns(trained, objective):
    losses = trained[objective]["losses"]
    assert list(losses["epoch"]) == [1, 2, 3, 4, 5] and (losses["step_count"] == 4).all()
    components = {"thesis": ["gender", "race", "age", "profession"], "contrastive": ["contrastive"],
                  "adversarial": ["contrastive", "adv_gender", "adv_race"]}[objective]
    assert list(losses.columns) == ["epoch", "step_count", "loss", *components, "seconds"]
    assert losses["loss"].iloc[-1] < losses["loss"].iloc[0]
    if objective == "thesis":
        recomputed = losses["gender"] + losses["race"] + 0.1 * losses["age"] + losses["profession"]
        np.testing.assert_allclose(losses["loss"], recomputed, rtol=1e-5)
    else:
        assert losses["contrastive"].iloc[-1] < losses["contrastive"].iloc[0]
    on_disk = pd.read_csv(f"{trained[objective]['out_dir']}/losses.csv")
    np.testing.assert_allclose(on_disk["loss"], losses["loss"], rtol=1e-6)


def test_adapter_format_and_loading(trained, tiny_hf, table):
    from peft import PeftModel
    from transformers import CLIPModel

    out = trained["contrastive"]["out_dir"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "losses.csv", "vlmbias_finetune.json"):
        assert (Path(out) / name).is_file()
    meta = json.loads(open(f"{out}/vlmbias_finetune.json").read())
    assert meta["towers"] == ["text"] and meta["objective"] == "contrastive" and meta["base"] == str(tiny_hf)
    assert meta["image_embeddings_unchanged"] is True and meta["spec"]["r"] == 16
    weights = load_file(f"{out}/adapter_model.safetensors")
    assert weights and all("text_model" in k and "lora_" in k for k in weights)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)  # trained, not the zero init

    peft_model = PeftModel.from_pretrained(CLIPModel.from_pretrained(str(tiny_hf)), out)
    assert sum(n.endswith("lora_A") for n, _ in peft_model.named_modules()) == 2  # q_proj + v_proj, 1 text layer

    tuned = load_encoder({"backend": "hf", "name": str(tiny_hf), "adapter": out})
    plain = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    px = torch.stack([plain.preprocess(Image.open(p).convert("RGB")) for p in table["path"][:4]])
    np.testing.assert_array_equal(tuned.encode_images(px), plain.encode_images(px))  # text-only adapter
    texts = ["a photo of a doctor", "a photo of a nurse"]
    assert np.abs(tuned.encode_texts(texts) - plain.encode_texts(texts)).max() > 1e-3


def test_vision_adapter_changes_image_embeddings(trained, tiny_hf, table):
    out = trained["adversarial"]["out_dir"]
    meta = json.loads(open(f"{out}/vlmbias_finetune.json").read())
    assert meta["towers"] == ["text", "vision"] and meta["image_embeddings_unchanged"] is False
    assert any("vision_model" in k for k in load_file(f"{out}/adapter_model.safetensors"))
    tuned = load_encoder({"backend": "hf", "name": str(tiny_hf), "adapter": out})
    plain = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    px = torch.stack([plain.preprocess(Image.open(p).convert("RGB")) for p in table["path"][:4]])
    assert np.abs(tuned.encode_images(px) - plain.encode_images(px)).max() > 1e-4


def test_deterministic(tiny_hf, table, tmp_path):
    spec = {"objective": "adversarial", "towers": ["text", "vision"], "lr": 1e-2, "epochs": 2, "max_steps": 5,
            "seed": 3}  # lora_dropout 0.1 stays on: the dropout masks must be seeded too
    runs = [finetune(str(tiny_hf), table, spec, tmp_path / name, progress=False) for name in ("a", "b")]
    a, b = (open(tmp_path / n / "adapter_model.safetensors", "rb").read() for n in ("a", "b"))
    assert a == b
    assert runs[0]["steps"] == 5 and list(runs[0]["losses"]["step_count"]) == [4, 1]
    finetune(str(tiny_hf), table, {**spec, "seed": 4}, tmp_path / "c", progress=False)
    assert open(tmp_path / "c" / "adapter_model.safetensors", "rb").read() != a


def test_inverse_frequency_weights():
    w = inverse_frequency_weights(["a", "a", "a", "b", "c", "c"], ["a", "b", "c"])
    # n / (K * n_c) = 6 / (3 * [3, 1, 2])
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2.0, 1.0]))
    torch.testing.assert_close(inverse_frequency_weights(["x", "y"] * 5, ["x", "y"]), torch.ones(2))
    with pytest.raises(VlmbiasError, match=r"\['z'\] have no examples"):
        inverse_frequency_weights(["x", "y"], ["x", "y", "z"])


def test_gradient_reversal_by_hand():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = grad_reverse(x, 0.5)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_age_and_target_helpers():
    assert [age_midpoint(v) for v in ("0-2", "20-29", "more than 70", "70+", 33, "41")] == [1, 24.5, 75, 75, 33, 41]
    with pytest.raises(VlmbiasError, match="cannot read age 'old'"):
        age_midpoint("old")
    assert target_regex(["text"], ["q_proj"]) == r"(?:text_model)\..*\.(?:q_proj)"


def test_adapter_on_base_of_another_shape(trained, tiny_hf, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    other = shutil.copytree(tiny_hf, tmp_path / "wider")
    cfg = CLIPConfig.from_pretrained(tiny_hf)
    cfg.text_config.hidden_size, cfg.text_config.intermediate_size = 48, 96
    CLIPModel(cfg).save_pretrained(other)
    with pytest.raises(VlmbiasError, match="does not fit base model .*wider.*trained on another model"):
        load_encoder({"backend": "hf", "name": str(other), "adapter": trained["thesis"]["out_dir"]})


def test_bad_inputs(tiny_hf, table, tmp_path):
    base = str(tiny_hf)

    def run(tbl=table, **spec):
        return finetune(base, tbl, {**FAST, "max_steps": 1, **spec}, tmp_path / "bad", progress=False)

    with pytest.raises(VlmbiasError, match="table is empty"):
        run(table.iloc[:0])
    with pytest.raises(VlmbiasError, match=r"missing column\(s\) \['race', 'age'\]"):
        run(table.drop(columns=["race", "age"]))
    with pytest.raises(VlmbiasError, match=r"missing column\(s\) \['path'\] needed by objective 'contrastive'"):
        run(table.drop(columns=["path"]), objective="contrastive")
    with pytest.raises(VlmbiasError, match=r"race class\(es\) \['Indian'\] have no examples"):
        run(classes={"race": ["Black", "Indian", "White"]})
    with pytest.raises(VlmbiasError, match=r"concept 'nurse' has no images of race class\(es\) \['Black'\]"):
        run(table[~((table.concept == "nurse") & (table.race == "Black"))], balance=["race"])
    with pytest.raises(VlmbiasError, match="single class"):
        run(table[table.gender == "Male"], objective="adversarial")
    with pytest.raises(VlmbiasError, match="unknown fine-tuning objective 'debias'"):
        run(objective="debias")
    with pytest.raises(VlmbiasError, match="invalid towers"):
        run(towers=["audio"])
    with pytest.raises(VlmbiasError, match="invalid towers"):
        run(towers=[])
    with pytest.raises(VlmbiasError, match="thesis objective only reads the text embedding"):
        run(towers=["vision"])
    with pytest.raises(VlmbiasError, match=r"unknown fine-tuning spec key\(s\) \['learning_rate'\]"):
        run(learning_rate=1e-3)
    with pytest.raises(VlmbiasError, match="cannot read age 'unknown'"):
        run(table.assign(age="unknown"))
    with pytest.raises(VlmbiasError, match="cannot be read"):
        run(table.assign(path=str(tmp_path / "nope.png")), objective="contrastive")
    with pytest.raises(VlmbiasError, match="base model .* is not a loadable CLIPModel directory"):
        finetune(str(tmp_path), table, {"max_steps": 1}, tmp_path / "bad2", progress=False)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()  # nothing half-written


def test_defaults_are_the_thesis_settings():
    s = resolve_spec({})
    assert (s["objective"], s["towers"], s["r"], s["lora_alpha"], s["target_modules"], s["lora_dropout"], s["bias"],
            s["lr"], s["batch_size"], s["epochs"], s["age_weight"], s["adv_weight"]) == \
        ("thesis", ["text"], 16, 32, ["q_proj", "v_proj"], 0.1, "none", 1e-5, 4, 15, 0.1, 1.0)
    assert resolve_spec({"objective": "contrastive", "towers": ["vision", "text"]})["towers"] == ["text", "vision"]


def test_cli(tiny_hf, table, tmp_path):
    write_table(table, tmp_path / "train.parquet")
    args = ["--base", str(tiny_hf), "--train", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "ad"),
            "--spec-json", json.dumps({"objective": "contrastive", "lr": 1e-3}), "--threads", "1",
            "--max-steps", "2", "--no-progress"]
    assert run_cli(main, args) == 0
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "ad" / "vlmbias_finetune.json").read_text())["spec"]["max_steps"] == 2
    assert run_cli(main, [*args[:-5], "--spec-json", '{"objective": "x"}']) == 2
