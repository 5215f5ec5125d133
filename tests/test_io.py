"""Artifacts are shareable: final files and folders get the permissions a plain open()/mkdir()
would give under the umask (tempfile's 0600/0700 must not leak into results)."""
import os
import stat

import numpy as np
import pandas as pd
import pytest

from vlmbias import io
from vlmbias.cli.cache import write_cache


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing(umask):
    assert io.current_umask() == umask
    assert io.current_umask() == umask


def test_written_files_follow_the_umask(tmp_path, umask):
    df = pd.DataFrame({"a": [1, 2]})
    io.write_table(df, tmp_path / "t.parquet")
    io.write_table(df, tmp_path / "sub" / "t.csv")
    io.write_npy(np.zeros(3, np.float32), tmp_path / "x.npy")
    with io.atomic_path(tmp_path / "plain.txt") as tmp:
        tmp.write_text("x")
    with open(tmp_path / "reference.txt", "w") as f:  # what a plain open() gives
        f.write("x")
    want = 0o666 & ~umask
    assert mode(tmp_path / "reference.txt") == want
    for name in ("t.parquet", "sub/t.csv", "x.npy", "plain.txt"):
        assert mode(tmp_path / name) == want, name
    assert mode(tmp_path / "sub") == 0o777 & ~umask
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"


def test_folders_built_beside_and_renamed_follow_the_umask(tmp_path, umask, monkeypatch):
    from vlmbias.world import generate

    def tiny_world(spec, root):
        (root / "corpus").mkdir()
        io.write_table(pd.DataFrame({"a": [1]}), root / "corpus.parquet")

    monkeypatch.setattr(generate, "_write_world", tiny_world)
    monkeypatch.setattr(generate, "resolve_spec", lambda spec: spec)
    generate.generate_world({}, tmp_path / "world")
    assert mode(tmp_path / "world") == 0o777 & ~umask
    assert mode(tmp_path / "world" / "corpus.parquet") == 0o666 & ~umask

    entry = tmp_path / "cache" / "entry"
    write_cache(entry, np.zeros((1, 2), np.float32), pd.DataFrame({"row": [0], "image_id": ["a"]}),
                pd.DataFrame(columns=["image_id", "path", "reason"]), {"k": 1})
    assert mode(entry) == 0o777 & ~umask
    assert {p.name: mode(p) for p in entry.iterdir()} == {
        n: 0o666 & ~umask for n in ("images.parquet", "skipped.csv", "meta.json", "images.npy")}


def _manifest(root):
    (root / "img").mkdir(parents=True)
    for n in ("a", "b"):
        (root / "img" / f"{n}.jpg").write_bytes(b"x")
    return pd.DataFrame({"image_id": ["a", "b", "c"],
                         "path": [str(root / "img/a.jpg"), str(root / "img/b.jpg"), None]})


def test_paths_are_stored_relative_and_resolved_after_a_move(tmp_path):
    project = tmp_path / "project"
    df = _manifest(project / "data")
    table = project / "results" / "run" / "manifest.parquet"
    io.write_table(df, table, path_root=project / "data")
    stored = pd.read_parquet(table)
    assert stored["path"].tolist()[:2] == ["img/a.jpg", "img/b.jpg"] and pd.isna(stored["path"].iat[2])
    assert io.read_table(table)["path"].tolist()[:2] == df["path"].tolist()[:2]

    moved = tmp_path / "elsewhere" / "deeper" / "project"
    moved.parent.mkdir(parents=True)
    project.rename(moved)  # the dataset moved with the results: found through the relative root
    back = io.read_table(moved / "results" / "run" / "manifest.parquet")
    assert back["path"].tolist()[:2] == [str(moved / "data/img/a.jpg"), str(moved / "data/img/b.jpg")]
    assert pd.isna(back["path"].iat[2])
    assert all(os.path.isfile(p) for p in back["path"].iloc[:2])


def test_a_dataset_outside_the_results_is_found_through_its_absolute_root(tmp_path):
    data = tmp_path / "datasets" / "ff"
    df = _manifest(data)
    io.write_table(df, tmp_path / "results" / "manifest.parquet", path_root=data)
    (tmp_path / "moved" / "a" / "b").mkdir(parents=True)
    (tmp_path / "results").rename(tmp_path / "moved" / "a" / "b" / "results")
    back = io.read_table(tmp_path / "moved" / "a" / "b" / "results" / "manifest.parquet")
    assert back["path"].tolist()[:2] == df["path"].tolist()[:2]


def test_tables_without_a_root_read_unchanged(tmp_path):
    df = pd.DataFrame({"image_id": ["a"], "path": ["/abs/a.jpg"]})
    io.write_table(df, tmp_path / "t.parquet")
    assert io.table_path_root(tmp_path / "t.parquet") is None
    assert io.read_table(tmp_path / "t.parquet")["path"].tolist() == ["/abs/a.jpg"]
    with pytest.raises(ValueError):
        io.write_table(df, tmp_path / "t.csv", path_root=tmp_path)
