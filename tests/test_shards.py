"""Sharded image embedding (embed.shard_size): shards merged = the unsharded run, byte for byte."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from vlmbias import VlmbiasError, io
from vlmbias import config as vconfig
from vlmbias.audit import embed, shards
from vlmbias.audit.data import build_manifest
from vlmbias.io import write_table


@pytest.fixture(scope="module")
def planted_manifest(fairface_dir, tmp_path_factory):
    """The 42-image FairFace folder with two unreadable images, in shards 0 and 2 of a 16-image split."""
    tmp = tmp_path_factory.mktemp("shard_manifest")
    manifest, _, _ = build_manifest({"type": "fairface", "root": str(fairface_dir)})
    bad = tmp / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    manifest.loc[3, "path"], manifest.loc[40, "path"] = str(bad), str(tmp / "gone.jpg")
    path = tmp / "manifest.parquet"
    write_table(manifest, path)
    return path, manifest


def _embed(model, manifest_path, out, *extra):
    out.mkdir(parents=True, exist_ok=True)
    embed.main(["images", "--model-json", json.dumps(model), "--manifest", str(manifest_path), "--batch-size", "8",
                "--num-workers", "0", "--max-bad-fraction", "0.1", "--out-npy", str(out / "images.npy"),
                "--out-table", str(out / "images.parquet"), "--skipped", str(out / "skipped.csv"), *extra])


def test_shard_rows_cover_the_manifest_once():
    assert shards.shard_count(42, 16) == 3 and shards.shard_count(42, None) == shards.shard_count(42, 0) == 1
    assert shards.shard_count(48, 16) == 3 and shards.shard_count(0, 16) == 1
    assert [shards.shard_rows(42, 16, i) for i in range(3)] == [slice(0, 16), slice(16, 32), slice(32, 42)]
    assert shards.shard_rows(42, None, 0) == slice(0, 42)
    with pytest.raises(VlmbiasError, match="shard 3 does not exist: 42 images in shards of 16 make 3"):
        shards.shard_rows(42, 16, 3)


def test_sharded_embedding_is_bitwise_the_unsharded_one(planted_manifest, tiny_hf, tmp_path):
    path, manifest = planted_manifest
    model = {"backend": "hf", "name": str(tiny_hf)}
    _embed(model, path, tmp_path / "whole")
    parts = tmp_path / "parts"
    for i in range(3):  # the shell command of rule embed_images, shard by shard
        parts.mkdir(exist_ok=True)
        embed.main(["images", "--model-json", json.dumps(model), "--manifest", str(path), "--batch-size", "8",
                    "--num-workers", "0", "--max-bad-fraction", "0.01", "--shard", str(i), "--shard-size", "16",
                    "--out-npy", str(parts / f"{i}.npy"), "--out-table", str(parts / f"{i}.parquet"),
                    "--skipped", str(parts / f"{i}_skipped.parquet")])
    # shard 0 skips 1 of 16 (> 0.01): the per-shard run leaves the check to the merge
    assert len(np.load(parts / "0.npy")) == 15 and len(np.load(parts / "1.npy")) == 16
    merged = tmp_path / "merged"
    shards.main(["--manifest", str(path), "--shard-size", "16", "--shards", *(str(parts / f"{i}.npy") for i in range(3)),
                 "--max-bad-fraction", "0.1", "--out-npy", str(merged / "images.npy"),
                 "--out-table", str(merged / "images.parquet"), "--skipped", str(merged / "skipped.csv")])
    for name in ("images.npy", "images.parquet", "skipped.csv"):
        assert (merged / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    skipped = pd.read_csv(merged / "skipped.csv")
    assert skipped["image_id"].tolist() == [manifest.image_id[3], manifest.image_id[40]]
    assert len(np.load(merged / "images.npy")) == 40


def _part(ids, n_bad, dim=4):
    kept = ids[n_bad:]
    return (np.ones((len(kept), dim), np.float32), pd.DataFrame({"row": np.arange(len(kept)), "image_id": kept}),
            pd.DataFrame({"image_id": ids[:n_bad], "path": [f"/x/{i}" for i in ids[:n_bad]], "reason": "broken"}))


def test_merge_checks_the_whole_dataset_and_refuses_stale_shards():
    ids = np.array([f"i{n}" for n in range(40)], dtype=object)
    manifest = pd.DataFrame({"image_id": ids, "path": [f"/x/{i}" for i in ids]})
    parts = [_part(ids[0:16], 3), _part(ids[16:32], 0), _part(ids[32:40], 0)]
    # 3 of shard 0's 16 unreadable (19 %), 3 of the dataset's 40 (7.5 %): the dataset's share decides
    rows, skipped = shards.merge_shards(manifest, 16, parts, max_bad_fraction=0.1)
    assert rows["image_id"].tolist() == ids[3:].tolist() and rows["row"].tolist() == list(range(37))
    assert skipped["image_id"].tolist() == ["i0", "i1", "i2"]
    with pytest.raises(VlmbiasError, match="3 of 40 images could not be read .allowed fraction 0.05.; first: /x/i0"):
        shards.merge_shards(manifest, 16, parts, max_bad_fraction=0.05)
    with pytest.raises(VlmbiasError, match="2 shard.s. given; 40 images in shards of 16 make 3"):
        shards.merge_shards(manifest, 16, parts[:2], max_bad_fraction=0.1)
    stale = [parts[0], _part(ids[17:33], 0), parts[2]]  # a shard of another split
    with pytest.raises(VlmbiasError, match="shard 1 does not match the manifest"):
        shards.merge_shards(manifest, 16, stale, max_bad_fraction=0.1)
    swapped = [parts[0], _part(ids[16:32][::-1].copy(), 0), parts[2]]
    with pytest.raises(VlmbiasError, match="shard 1: its rows are not in manifest order"):
        shards.merge_shards(manifest, 16, swapped, max_bad_fraction=0.1)


def test_concatenation_streams_to_the_bytes_np_save_writes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 5)).astype(np.float32) for n in (7, 0, 3)]
    arrays[1] = np.zeros((0, 0), np.float32)  # a shard whose every image was skipped
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"{i}.npy", a)
    shape, digest = shards.write_concatenated([np.load(tmp_path / f"{i}.npy", mmap_mode="r") for i in range(3)],
                                              tmp_path / "out.npy")
    assert shape == (10, 5) and digest == io.file_digest(tmp_path / "out.npy")
    np.save(tmp_path / "ref.npy", np.concatenate([arrays[0], arrays[2]]))
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    with pytest.raises(VlmbiasError, match="differ in dimension .3, 5."):
        shards.write_concatenated([arrays[0], np.ones((2, 3), np.float32)], tmp_path / "bad.npy")
    assert not (tmp_path / "bad.npy").exists()


def _config(**embed_block):
    return {"datasets": {"d": {"type": "fairface", "root": "/x"}}, "models": {"m": {"backend": "hf", "name": "x"}},
            "query_sets": {"q": {"queries": ["a"]}}, "embed": embed_block}


def test_shard_size_config_errors_name_the_key():
    vconfig.validate(_config(shard_size=256, batch_size=128))
    vconfig.validate(_config(shard_size=0))
    vconfig.validate(_config(shard_size=None))
    with pytest.raises(VlmbiasError, match=r"embed.shard_size \(100\) must be a multiple of embed.batch_size \(64\)"):
        vconfig.validate(_config(shard_size=100))  # the schema's default batch size
    with pytest.raises(VlmbiasError, match=r"embed.shard_size \(96\) must be a multiple of embed.batch_size \(64\)"):
        vconfig.validate(_config(shard_size=96, batch_size=64))
    with pytest.raises(VlmbiasError, match="at embed.shard_size: -1 is less than the minimum of 0"):
        vconfig.validate(_config(shard_size=-1))
    assert vconfig.shard_size(_config(shard_size=0)) is None and vconfig.shard_size(_config(shard_size=8)) == 8


def test_default_config_shards_the_world():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "config.yaml").read_text())
    world = config["world"]
    n_test = 7 * 2 * world["test_per_cell"]  # the world's test split: 7 races x 2 genders per cell
    assert shards.shard_count(n_test, config["embed"]["shard_size"]) >= 3
    vconfig.validate(config)
