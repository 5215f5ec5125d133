import copy
import os
import shutil
import struct
import tempfile
import zlib

import pytest

from vlmbias.testing import make_fairface_folder, make_tiny_hf_clip, tiny_open_clip_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests see none of this machine's caches (a hub cache holding real weights would change what an
# offline load finds; an embedding cache what the CLI recomputes): every run starts with empty ones,
# removed at the end (snakemake jobs inherit them).
CACHES = tempfile.mkdtemp(prefix="vlmbias-test-caches-")
for _var in ("HF_HOME", "TORCH_HOME", "VLMBIAS_CACHE"):
    os.environ[_var] = os.path.join(CACHES, _var.lower())


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHES, ignore_errors=True)


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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory):
    """A valid 30000 x 30000 one-bit PNG of a single colour: about 100 KB on disk, 900 million
    pixels once decoded (a decompression bomb). Written row by row, never held as an image."""
    w = h = 30000
    row = b"\0" * (1 + (w + 7) // 8)  # filter byte + w bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


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
