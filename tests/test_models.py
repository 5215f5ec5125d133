import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.audit.models import load_encoder
from vlmbias.mitigate.finetune import load_base


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
