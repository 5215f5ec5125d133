import copy
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


@pytest.fixture(scope="session")
def tiny_workflow_config(fairface_dir, tiny_hf):
    """The small audit config of the end-to-end runs (a FairFace-format folder, a tiny hf CLIP, two
    query sets): `tiny_workflow_config(threads=1)` gives a fresh copy, keyword arguments replacing
    top-level keys. Used by test_workflow.py and test_slurm.py."""
    base = {
        "run_name": "smoke",
        "datasets": {"ff": {"type": "fairface", "root": str(fairface_dir)}},
        "models": {"tiny": {"backend": "hf", "name": str(tiny_hf)}},
        "query_sets": {
            "jobs": {"queries": ["a doctor", "a nurse"], "templates": ["{}", "a photo of {}"]},
            "groups": {"queries": [{"text": "a Black person", "names": {"race": "Black"}}]},
        },
        "retrieval": {"k": [5, 20]},
        "metrics": {"n_boot": 200},
        "embed": {"num_workers": 0},
        "figures": {"grid_k": 5},
    }

    def make(**overrides):
        return {**copy.deepcopy(base), **copy.deepcopy(overrides)}
    return make
