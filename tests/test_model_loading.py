"""Model names as users type them: hub ids, local folders (and mistyped ones), open_clip's hf-hub:
form, offline without a local copy, and a local checkpoint of the wrong architecture."""
import logging
import time

import pytest

from vlmbias import VlmbiasError
from vlmbias.encoders import models
from vlmbias.encoders.models import load_encoder, local_model_folder
from vlmbias.cli import main
from vlmbias.cli.audit import format_model_spec, parse_model_spec
from vlmbias.testing import make_tiny_open_clip_tags


def test_local_folder_relative_or_bare_is_a_path(tiny_hf, monkeypatch):
    monkeypatch.chdir(tiny_hf.parent)
    for text in (f"hf:./{tiny_hf.name}", f"hf:{tiny_hf.name}"):
        assert parse_model_spec(text) == {"backend": "hf", "name": str(tiny_hf.resolve())}
    assert parse_model_spec("hf:openai/clip-vit-base-patch32")["name"] == "openai/clip-vit-base-patch32"


@pytest.mark.parametrize("name", ["tinyclp", "./tinyclp", "../models/tinyclp", "/no/such/model", "a/b/c", "~/tinyclp"])
def test_mistyped_local_folder_is_no_such_folder_without_the_hub(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "from_hub", lambda *a, **k: pytest.fail("a path went to the hub"))
    with pytest.raises(VlmbiasError, match=f"model {name}: no such folder"):
        load_encoder({"backend": "hf", "name": name})


def test_mistyped_folder_on_the_command_line_is_one_sentence(fairface_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    assert main(["audit", "--model", "hf:./tinyclp", "--dataset", str(fairface_dir), "--query", "a doctor"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: model ./tinyclp: no such folder (looked in {tmp_path / 'tinyclp'}); a local model is an existing "
        "folder, a hub model an id of the form org/name (e.g. openai/clip-vit-base-patch32)"]
    assert time.monotonic() - t0 < 10


def test_a_file_is_not_a_model_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(VlmbiasError, match="is a file; a model is a folder"):
        local_model_folder(str(f))


def test_open_clip_hf_hub_ids_are_accepted():
    spec = parse_model_spec("hf-hub:timm/ViT-B-16-SigLIP")
    assert spec == {"backend": "open_clip", "name": "hf-hub:timm/ViT-B-16-SigLIP", "pretrained": None}
    assert format_model_spec(spec) == "hf-hub:timm/ViT-B-16-SigLIP" == models.model_id(spec)
    with pytest.raises(VlmbiasError, match="brings its own weights"):
        load_encoder({**spec, "pretrained": "openai"})


@pytest.mark.parametrize("spec", [
    {"backend": "hf", "name": "openai/clip-vit-base-patch32"},
    {"backend": "open_clip", "name": "RN50", "pretrained": "openai"},
    {"backend": "open_clip", "name": "hf-hub:timm/ViT-B-16-SigLIP", "pretrained": None},
])
def test_offline_without_a_local_copy_fails_at_once_in_one_sentence(spec, tmp_path, monkeypatch, caplog):
    """The cache is tried first without network; one quick probe says the hub is unreachable; no retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    probes = []
    real = models.hub_unreachable
    monkeypatch.setattr(models, "hub_unreachable", lambda: probes.append(1) or real())
    t0 = time.monotonic()
    with pytest.raises(VlmbiasError) as e:
        load_encoder(spec)
    assert time.monotonic() - t0 < 15
    assert probes == [1]
    msg = str(e.value)
    assert "is not in the local Hugging Face cache" in msg and "http://127.0.0.1:9 cannot be reached" in msg
    assert "needs network access once" in msg and "\n" not in msg
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # the sentence is the only error


def test_wrong_architecture_checkpoint_names_the_mismatch(tmp_path):
    entry = make_tiny_open_clip_tags(tmp_path, {"tiny-a": ["s1"], "tiny-b": ["s1"]})
    other = entry["tags"]["tiny-b:s1"]
    by_path = {"backend": "open_clip", "name": "tiny-a", "pretrained": other, "config": entry["config"]}
    by_tag = {"backend": "open_clip", "name": "tiny-a", "pretrained": "s2", "config": entry["config"],
              "tags": {"tiny-a:s2": other}}
    for spec in (by_path, by_tag):
        with pytest.raises(VlmbiasError) as e:
            load_encoder(spec)
        msg = str(e.value)
        assert msg.startswith(f"the weights in {other} do not match the open_clip architecture tiny-a")
        assert "width changed" in msg and "could not be fetched" not in msg and "network" not in msg
