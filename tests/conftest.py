import os

import pytest

from vlmbias.testing import make_fairface_folder, make_tiny_hf_clip, tiny_open_clip_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def fairface_dir(tmp_path_factory):
    return make_fairface_folder(tmp_path_factory.mktemp("fairface"), per_cell=3)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    return make_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    cfg = tiny_open_clip_config(tmp_path_factory.mktemp("tiny_oc") / "vlmbias-tiny-vit.json")
    return {"backend": "open_clip", "name": "vlmbias-tiny-vit", "config": str(cfg), "pretrained": None}
