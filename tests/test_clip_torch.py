"""The plain-torch CLIP (`vlmbias.encoders.clip_torch`) against transformers' CLIPModel: the same
features bit for bit on the CPU, the same parameter names, and a fallback (None) for anything else."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmbias.encoders.clip_torch import NativeCLIP, load_native_clip
from vlmbias.encoders.models import _merge_plain_lora, load_clip_weights, load_encoder, load_prompt_encoder
from vlmbias.testing import make_lora_adapter


def _tiny(folder: Path, hidden_act: str = "quick_gelu", eos: int = 99, seed: int = 0, layers: int = 2) -> Path:
    """A random tiny CLIPModel folder (weights and config only) with the given activation and eos id."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=24, hidden_act=hidden_act,
                         bos_token_id=98, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=layers, num_attention_heads=4, hidden_act=hidden_act),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder)
    return folder


def _reference(folder, dtype=torch.float32):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(folder), dtype=dtype).eval()
    assert model.config._attn_implementation == "sdpa"  # the default this module reproduces
    return model


def _padded_batch(eos: int, lengths=(3, 7, 12, 5), width=None, seed=0):
    """Token ids [bos, random..., eos, eos padding...] and their attention masks, one row per length."""
    gen = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.full((len(lengths), width), eos)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0] = 98
        ids[row, 1:n - 1] = torch.randint(3, 90, (n - 2,), generator=gen)
        mask[row, :n] = 1
    return ids, mask


def _text(model, ids, mask):
    from vlmbias.encoders.base import features

    with torch.inference_mode():
        return features(model.get_text_features(input_ids=ids, attention_mask=mask))


def _image(model, pixels):
    from vlmbias.encoders.base import features

    with torch.inference_mode():
        return features(model.get_image_features(pixel_values=pixels))


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu"])
@pytest.mark.parametrize("eos", [99, 2])
def test_features_equal_transformers_bit_for_bit(tmp_path, hidden_act, eos):
    folder = _tiny(tmp_path / "m", hidden_act=hidden_act, eos=eos)
    ref, ours = _reference(folder), load_native_clip(folder)
    assert isinstance(ours, NativeCLIP) and not ours.training
    assert list(ours.state_dict()) == list(ref.state_dict())
    ids, mask = _padded_batch(eos)
    for i, m in ((ids, mask), (ids[1:2, :7], mask[1:2, :7]), (ids[1:2, :7], None), (ids[:, :1], mask[:, :1])):
        a, b = _text(ref, i, m), _text(ours, i, m)
        assert a.shape == b.shape and torch.equal(a, b)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_image(ref, pixels), _image(ours, pixels))


def test_pooling_follows_the_eos_rule(tmp_path):
    """Same weights, two eos ids: 2 (legacy configs) pools at the highest token id (here the start
    token 98 at position 0, above the eos 97), any other id at the first eos of each row."""
    modern = _tiny(tmp_path / "m", eos=97)
    legacy = Path(shutil.copytree(modern, tmp_path / "l"))
    _edit_config(legacy, lambda c: c["text_config"].update(eos_token_id=2))
    modern, legacy = load_native_clip(modern), load_native_clip(legacy)
    assert legacy.text_model.eos_token_id == 2
    lengths = (3, 7, 5)
    ids, mask = _padded_batch(97, lengths=lengths)
    first = _text(legacy, ids[:, :1], mask[:, :1])
    torch.testing.assert_close(_text(legacy, ids, mask), first)
    pooled = _text(modern, ids, mask)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(pooled[row:row + 1], _text(modern, ids[row:row + 1, :n], mask[row:row + 1, :n]))
    assert (pooled - first).abs().max() > 1e-3


def test_bf16_equals_transformers(tiny_hf):
    ref, ours = _reference(tiny_hf, torch.bfloat16), load_native_clip(tiny_hf, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    ids, mask = _padded_batch(513, lengths=(4, 9))
    assert torch.equal(_text(ref, ids, mask), _text(ours, ids, mask))
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(_image(ref, pixels), _image(ours, pixels))


def test_encoder_loads_native_and_encodes_as_transformers(tiny_hf):
    """The audit's encoder (tokenizer, padding, truncation) on the native model gives transformers'
    embeddings exactly."""
    from transformers import AutoTokenizer

    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    assert isinstance(enc.module, NativeCLIP)
    texts = ["a photo of a doctor", "a nurse", "x", "an engineer standing next to a very long bridge " * 3]
    ref, tok = _reference(tiny_hf), AutoTokenizer.from_pretrained(str(tiny_hf))
    toks = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    expected = torch.nn.functional.normalize(_text(ref, toks["input_ids"], toks["attention_mask"]), dim=-1)
    np.testing.assert_array_equal(enc.encode_texts(texts), expected.numpy())
    pixels = torch.randn(2, 3, 32, 32)
    expected = torch.nn.functional.normalize(_image(ref, pixels), dim=-1)
    np.testing.assert_array_equal(enc.encode_images(pixels), expected.numpy())


@pytest.mark.parametrize("config", [{}, {"use_rslora": True}])
def test_lora_merged_native_equals_peft_merged_transformers(tiny_hf, tmp_path, config):
    """A plain LoRA merges into the native model by hand; any other kind reloads transformers' model
    for peft; either way the encoder's embeddings are peft's merge_and_unload's exactly."""
    from peft import PeftModel

    adapter = make_lora_adapter(tiny_hf, tmp_path / "adapter", ("q_proj", "v_proj", "fc1"), seed=3, **config)
    plain = not config
    assert _merge_plain_lora(load_native_clip(tiny_hf), adapter) is plain
    ref = PeftModel.from_pretrained(_reference(tiny_hf), str(adapter)).merge_and_unload().eval()
    enc = load_encoder({"backend": "hf", "name": str(tiny_hf), "adapter": str(adapter)})
    assert isinstance(enc.module, NativeCLIP) is plain
    ids, mask = _padded_batch(513, lengths=(4, 9, 2))
    ours = enc.module
    assert torch.equal(_text(ref, ids, mask), _text(ours, ids, mask))
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(_image(ref, pixels), _image(ours, pixels))
    base = load_native_clip(tiny_hf)
    assert not torch.equal(_text(base, ids, mask), _text(ours, ids, mask))  # the adapter did something


def test_prompt_array_encoder_equals_transformers(tiny_hf, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from vlmbias.encoders.prompt_array import META, WEIGHTS, PromptedText

    out = tmp_path / "prompts"
    out.mkdir()
    prompts = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    save_file({"prompts": prompts}, str(out / WEIGHTS))
    (out / META).write_text(json.dumps({"n_tokens": 3}))
    enc = load_prompt_encoder(str(tiny_hf), out)
    assert isinstance(enc.module, NativeCLIP)
    texts = ["a photo of a doctor", "a nurse", "someone"]
    reference = PromptedText(_reference(tiny_hf), AutoTokenizer.from_pretrained(str(tiny_hf)), prompts)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(reference.encode_texts(texts), dim=-1).numpy()
    np.testing.assert_array_equal(enc.encode_texts(texts), expected)
    plain = load_encoder({"backend": "hf", "name": str(tiny_hf)}).encode_texts(texts)
    assert np.abs(plain - expected).max() > 1e-3  # the prompts are used


def _edit_config(folder, change):
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change", [
    lambda f: _edit_config(f, lambda c: c.update(model_type="siglip")),
    lambda f: _edit_config(f, lambda c: c["text_config"].update(hidden_act="gelu_10")),
    lambda f: _edit_config(f, lambda c: c["vision_config"].pop("patch_size")),
    lambda f: _edit_config(f, lambda c: c["vision_config"].update(num_attention_heads=0)),
    lambda f: _edit_config(f, lambda c: c["text_config"].update(eos_token_id=[513, 2])),
    lambda f: _edit_config(f, lambda c: c.update(_attn_implementation="eager")),
    lambda f: _edit_config(f, lambda c: c.update(text_config_dict={"hidden_size": 32})),
    lambda f: (f / "config.json").write_text("{not json"),
    lambda f: (f / "model.safetensors.index.json").write_text("{}"),
    lambda f: (f / "model.safetensors").rename(f / "model-00001-of-00001.safetensors"),
], ids=["model_type", "activation", "missing_key", "zero_heads", "eos_list", "attention", "config_dict", "bad_json", "sharded", "no_weights"])
def test_unsupported_folders_fall_back(tiny_hf, tmp_path, change):
    folder = Path(shutil.copytree(tiny_hf, tmp_path / "m"))
    change(folder)
    assert load_native_clip(folder) is None


@pytest.mark.parametrize("edit", ["missing", "unexpected", "shape"])
def test_mismatching_weights_fall_back(tiny_hf, tmp_path, edit):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(tiny_hf, tmp_path / "m"))
    state = load_file(str(folder / "model.safetensors"))
    if edit == "missing":
        del state["text_projection.weight"]
    elif edit == "unexpected":
        state["text_model.extra.weight"] = torch.zeros(2)
    else:
        state["logit_scale"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert load_native_clip(folder) is None


def test_unsupported_activation_loads_through_transformers(tiny_hf, tmp_path):
    folder = Path(shutil.copytree(tiny_hf, tmp_path / "m"))
    _edit_config(folder, lambda c: [c[t].update(hidden_act="gelu_10") for t in ("text_config", "vision_config")])
    model = load_clip_weights(str(folder), torch.float32)
    assert type(model).__name__ == "CLIPModel"
    assert type(load_clip_weights(str(tiny_hf), torch.float32, native=False)).__name__ == "CLIPModel"


def test_training_loaders_ask_for_transformers(tiny_hf):
    from vlmbias.mitigate.finetune import load_base

    assert type(load_base(str(tiny_hf))[0]).__name__ == "CLIPModel"


def test_int8_quantises_the_native_image_tower_as_transformers(tiny_hf):
    """precision int8 finds the native model's image-tower MLP layers by name and quantises them,
    giving transformers' int8 image features exactly."""
    from vlmbias.encoders.models import quantize_image_tower

    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)}, precision="int8")
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    kinds = {name: type(m) for name, m in enc.module.named_modules()}
    assert kinds["vision_model.encoder.layers.0.mlp.fc1"] is qlinear
    assert kinds["vision_model.encoder.layers.0.self_attn.q_proj"] is torch.nn.Linear
    pixels = torch.randn(2, 3, 32, 32)
    ref = quantize_image_tower(_reference(tiny_hf), "hf")
    expected = torch.nn.functional.normalize(_image(ref, pixels), dim=-1).numpy()
    np.testing.assert_array_equal(enc.encode_images(pixels), expected)


def test_loading_and_encoding_imports_no_transformers(tiny_hf):
    """Neither transformers nor the compiler stack (torch._dynamo, which building on the meta device
    can pull in) is imported by loading and encoding."""
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "from vlmbias.encoders.models import load_clip_weights\n"
        f"m = load_clip_weights({str(tiny_hf)!r}, torch.float32)\n"
        "assert type(m).__name__ == 'NativeCLIP', type(m)\n"
        "m.get_text_features(torch.tensor([[512, 5, 6, 513]]), torch.ones(1, 4, dtype=torch.long))\n"
        "m.get_image_features(torch.zeros(1, 3, 32, 32))\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(k for k in new if k.split('.')[0] == 'transformers' or k == 'torch._dynamo'))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
