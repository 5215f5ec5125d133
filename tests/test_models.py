import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.encoders.models import load_encoder
from vlmbias.mitigate.finetune import load_base
from vlmbias.testing import make_lora_adapter


@pytest.fixture(params=["hf", "open_clip"])
def spec(request, tiny_hf, tiny_open_clip):
    return {"backend": "hf", "name": str(tiny_hf)} if request.param == "hf" else tiny_open_clip


def test_both_backends_one_interface(spec):
    enc = load_encoder(spec)
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    px = torch.stack([enc.preprocess(img), enc.preprocess(img.rotate(90))])
    emb = enc.encode_images(px)
    txt = enc.encode_texts(["a doctor", "一位首席执行官", "طبيب"])
    assert emb.dtype == np.float32 and txt.dtype == np.float32
    assert emb.shape[1] == txt.shape[1] == 16
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, rtol=1e-5)
    # deterministic and batch-independent
    np.testing.assert_allclose(enc.encode_texts(["a doctor"])[0], txt[0], atol=1e-5)


def test_bf16_close_to_fp32(spec):
    img = Image.new("RGB", (32, 32), (10, 200, 10))
    e32, e16 = load_encoder(spec), load_encoder(spec, precision="bf16")
    a = e32.encode_images(e32.preprocess(img)[None])
    b = e16.encode_images(e16.preprocess(img)[None])
    assert b.dtype == np.float32 and float((a @ b.T).item()) > 0.98


def test_int8_quantises_the_image_tower_and_stays_close_to_fp32(spec, fairface_dir):
    """precision int8: the image tower's MLP Linear layers become dynamic int8 ones, attention and
    the text tower are untouched; image embeddings within a small angle of fp32's, text embeddings equal. (Rankings
    agree only with trained weights: benchmarks/embed.py measures top-20 overlap on the world's model.)"""
    from vlmbias.audit.data import build_manifest
    from vlmbias.imagegate import open_image

    e32, e8 = load_encoder(spec), load_encoder(spec, precision="int8")
    image_tower = e8.module.visual if spec["backend"] == "open_clip" else e8.module.vision_model
    text_tower = e8.module.transformer if spec["backend"] == "open_clip" else e8.module.text_model
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    kinds = {n: type(m) for n, m in image_tower.named_modules() if isinstance(m, (torch.nn.Linear, qlinear))}
    assert kinds and all((k is qlinear) == (".mlp." in f".{n}") for n, k in kinds.items())  # MLP ones only
    assert not any(isinstance(m, qlinear) for m in text_tower.modules())
    assert not any(isinstance(m, qlinear) for m in e32.module.modules())
    paths = build_manifest({"type": "fairface", "root": str(fairface_dir)})[0]["path"].tolist()[:12]
    px = torch.stack([e32.preprocess(open_image(p)) for p in paths])
    a, b = e32.encode_images(px), e8.encode_images(px)
    assert b.dtype == np.float32 and np.min(np.sum(a * b, 1)) > 0.99
    assert not np.array_equal(a, b)  # it did change the arithmetic
    texts = ["a doctor", "a nurse", "a photo of a woman"]
    np.testing.assert_array_equal(e32.encode_texts(texts), e8.encode_texts(texts))


def test_int8_is_cpu_only(tiny_hf):
    with pytest.raises(VlmbiasError, match="int8.*CPU only"):
        load_encoder({"backend": "hf", "name": str(tiny_hf)}, device="cuda", precision="int8")


def test_unknown_backend_and_model(tiny_open_clip):
    with pytest.raises(VlmbiasError, match="unknown model backend 'clip'"):
        load_encoder({"backend": "clip", "name": "x"})
    with pytest.raises(VlmbiasError, match="unknown open_clip model 'ViT-B-33'"):
        load_encoder({"backend": "open_clip", "name": "ViT-B-33", "pretrained": "openai"})
    with pytest.raises(VlmbiasError, match="no pretrained tag 'opneai'"):
        load_encoder({"backend": "open_clip", "name": "ViT-B-32", "pretrained": "opneai"})


def test_offline_hub_models_give_clear_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VlmbiasError, match="needs network access"):
        load_encoder({"backend": "hf", "name": "openai/clip-vit-base-patch32"})
    with pytest.raises(VlmbiasError, match="needs network access"):
        load_encoder({"backend": "open_clip", "name": "RN50", "pretrained": "openai"})


def test_adapter_errors(tiny_hf, tmp_path):
    with pytest.raises(VlmbiasError, match="no adapter_config.json"):
        load_encoder({"backend": "hf", "name": str(tiny_hf), "adapter": str(tmp_path)})


@pytest.mark.parametrize("config, by_hand", [({}, True), ({"use_rslora": True}, False)])
def test_adapter_merged_exactly_as_peft_merges_it(tiny_hf, tmp_path, config, by_hand):
    """A plain LoRA adapter is merged without peft (W += B A alpha / r) into the very weights
    peft's merge_and_unload gives; any other kind (here rsLoRA) is left to peft."""
    from peft import PeftModel

    from vlmbias.encoders.models import _merge_plain_lora, load_clip_weights

    adapter = make_lora_adapter(tiny_hf, tmp_path / "adapter", **config)
    model = load_clip_weights(str(tiny_hf), torch.float32)
    assert _merge_plain_lora(model, adapter) is by_hand
    reference = PeftModel.from_pretrained(load_clip_weights(str(tiny_hf), torch.float32, native=False),
                                          str(adapter)).merge_and_unload()
    base = load_clip_weights(str(tiny_hf), torch.float32).state_dict()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    changed = [k for k in ours if not torch.equal(ours[k], base[k])]
    if by_hand:
        assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    else:
        assert not changed  # untouched: peft merges it
    texts = ["a photo of a doctor", "a nurse"]
    enc = load_encoder({"backend": "hf", "name": str(tiny_hf), "adapter": str(adapter)})
    plain = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    assert not np.array_equal(enc.encode_texts(texts), plain.encode_texts(texts))
    assert all(torch.equal(a, b) for a, b in zip(enc.module.state_dict().values(), theirs.values()))


@pytest.fixture
def pickle_only(tiny_hf, tmp_path):
    """The tiny model with its weights as a pickle checkpoint (pytorch_model.bin), no safetensors."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_hf, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_checkpoint_is_refused_never_unpickled(pickle_only, monkeypatch):
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    message = r"holds only pickle weights \(pytorch_model.bin\), and vlmbias loads safetensors only"
    with pytest.raises(VlmbiasError, match=message):
        load_encoder({"backend": "hf", "name": str(pickle_only)})
    with pytest.raises(VlmbiasError, match="base model .*" + message):  # the LoRA base, the same way
        load_base(str(pickle_only))
    assert unpickled == []


def test_pickle_adapter_is_refused(tiny_hf, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(VlmbiasError, match=r"adapter .* holds only pickle weights \(adapter_model.bin\)"):
        load_encoder({"backend": "hf", "name": str(tiny_hf), "adapter": str(tmp_path)})
    (tmp_path / "adapter_model.bin").unlink()
    with pytest.raises(VlmbiasError, match="no adapter_model.safetensors"):
        load_encoder({"backend": "hf", "name": str(tiny_hf), "adapter": str(tmp_path)})
