"""Fault injection on the audit's artifacts: a damaged, mismatched or half-written input never becomes
a table with exit status 0. Each case ends with a non-zero status, one sentence naming the file(s)
and no changed output; an interrupted write leaves nothing after the next write of that artifact."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError, io
from vlmbias.audit import data, embed, metrics, retrieve, zeroshot


def _stage(main, args, capsys):
    """A stage run as its rule runs it (run_cli): (exit status, what it printed on stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        rc = io.run_cli(main, args)
    finally:  # run_cli's handler writes to this test's captured stderr: not into later tests
        root.handlers[:], root.level = handlers, level
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def audit_run(fairface_dir, tiny_hf, tmp_path_factory):
    """One complete run of the audit's stages on the 42-image folder: manifest, image and query
    embeddings, top-20 rankings and metric tables, each written by its stage's own main()."""
    d = tmp_path_factory.mktemp("audit_run")
    model = json.dumps({"backend": "hf", "name": str(tiny_hf)})
    data.main(["--spec-json", json.dumps({"type": "fairface", "root": str(fairface_dir)}),
               "--manifest", str(d / "manifest.parquet"), "--distribution", str(d / "distribution.csv"),
               "--missing", str(d / "missing.csv")])
    embed.main(["images", "--model-json", model, "--manifest", str(d / "manifest.parquet"), "--num-workers", "0",
                "--out-npy", str(d / "images.npy"), "--out-table", str(d / "images.parquet"),
                "--skipped", str(d / "skipped.csv")])
    embed.main(["queries", "--model-json", model, "--name", "jobs", "--queries-json",
                json.dumps({"queries": ["a doctor", "a nurse"]}), "--out-npy", str(d / "q.npy"),
                "--out-table", str(d / "q.parquet")])
    retrieve.main(_retrieve_args(d))
    metrics.main(_metrics_args(d, [5, 20]))
    return d


def _retrieve_args(d, k=20):
    return [str(x) for x in [
        "--images-npy", d / "images.npy", "--images-table", d / "images.parquet", "--queries-npy", d / "q.npy",
        "--queries-table", d / "q.parquet", "--manifest", d / "manifest.parquet", "--k", k,
        "--model", "tiny", "--dataset", "ff", "--query-set", "jobs", "--out", d / "rankings.parquet"]]


def _metrics_args(d, ks, *extra):
    return [str(x) for x in ["--rankings", d / "rankings.parquet", "--distribution", d / "distribution.csv",
                             "--k", *ks, "--n-boot", "100", "--out-classes", d / "classes.csv",
                             "--out-summary", d / "summary.csv", "--out-confusion", d / "confusion.csv", *extra]]


@pytest.fixture
def run(audit_run, tmp_path):
    """A fresh copy of the complete run to damage."""
    return shutil.copytree(audit_run, tmp_path / "run")


def _outputs(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix in (".parquet", ".csv", ".json")
            and p.name.startswith(("rankings", "classes", "summary", "confusion"))}


def test_artifacts_record_what_they_were_made_from(audit_run):
    d = audit_run
    images = io.table_metadata(d / "images.parquet")
    assert images["rows"] == 42 and images["npy"]["shape"] == [42, 16]
    assert images["npy"]["digest"] == io.file_digest(d / "images.npy")
    assert images["inputs"]["manifest"] == io.file_digest(d / "manifest.parquet")
    assert images["inputs"]["model"].startswith("sha256:") and images["vlmbias"]
    assert set(io.table_metadata(d / "q.parquet")["inputs"]) == {"model", "query_set"}
    ranked = io.table_metadata(d / "rankings.parquet")
    assert ranked["rows"] == 40 and ranked["inputs"]["images"] == images["npy"]["digest"]
    assert ranked["inputs"]["queries"] == io.file_digest(d / "q.npy")
    summary = io.table_metadata(d / "summary.csv")  # a CSV's record is its <name>.json sidecar
    assert summary["rows"] == len(pd.read_csv(d / "summary.csv")) == 2 * 2 * 3  # queries x ks x attributes
    assert summary["inputs"]["rankings"] == io.file_digest(d / "rankings.parquet")


def test_short_images_npy_is_refused_naming_both_files(run, capsys):
    """The first 30 of the 42 rows, a valid array: the row table still lists 42."""
    before = _outputs(run)
    np.save(run / "images.npy", np.load(run / "images.npy")[:30])
    rc, err = _stage(retrieve.main, _retrieve_args(run), capsys)
    assert rc == 2
    assert f"{run / 'images.npy'} holds 30 embeddings but {run / 'images.parquet'} lists 42 images" in err
    assert "rule embed_images" in err and "Traceback" not in err
    assert _outputs(run) == before


def test_all_nan_images_npy_is_refused(run, capsys):
    before = _outputs(run)
    np.save(run / "images.npy", np.full((42, 16), np.nan, np.float32))
    rc, err = _stage(retrieve.main, _retrieve_args(run), capsys)
    assert rc == 2 and str(run / "images.npy") in err and "Traceback" not in err
    assert "is not the array" in err  # the digest the row table records no longer matches
    assert _outputs(run) == before


def test_nan_embeddings_without_a_record_are_refused_as_non_finite(run, capsys):
    """An older row table records no digest: the finite check still catches the NaN row."""
    emb = np.load(run / "images.npy")
    emb[7, 3] = np.nan
    np.save(run / "images.npy", emb)
    io.write_table(io.read_table(run / "images.parquet"), run / "images.parquet")  # no provenance
    rc, err = _stage(retrieve.main, _retrieve_args(run), capsys)
    image = pd.read_parquet(run / "images.parquet")["image_id"].iat[7]
    assert rc == 2 and f"non-finite values (NaN or inf), first in row 7 (image {image})" in err


@pytest.mark.parametrize("cut", [0, 10, 200, -100])
def test_truncated_npy_names_the_file(run, capsys, cut):
    raw = (run / "images.npy").read_bytes()
    (run / "images.npy").write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    before = _outputs(run)
    rc, err = _stage(retrieve.main, _retrieve_args(run), capsys)
    assert rc == 2
    assert f"cannot read {run / 'images.npy'}, it is truncated or damaged" in err
    assert "rule embed_images rewrites it" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1  # one sentence
    assert _outputs(run) == before


def test_damaged_parquet_names_the_file(run, capsys):
    raw = (run / "rankings.parquet").read_bytes()
    (run / "rankings.parquet").write_bytes(raw[: len(raw) // 2])
    rc, err = _stage(metrics.main, _metrics_args(run, [5]), capsys)
    assert rc == 2 and f"cannot read {run / 'rankings.parquet'}, it is truncated or damaged" in err
    assert "rule retrieve rewrites it" in err


def test_embeddings_of_another_manifest_are_refused(run, capsys, fairface_dir):
    m = io.read_table(run / "manifest.parquet")
    io.write_table(m.assign(race=m["race"].iloc[::-1].to_numpy()), run / "manifest.parquet", path_root=fairface_dir)
    rc, err = _stage(retrieve.main, _retrieve_args(run), capsys)
    assert rc == 2 and "were made from another version of" in err and str(run / "manifest.parquet") in err


def test_zero_shot_reads_checked_embeddings(run, tiny_hf, capsys):
    """Every reader of images.npy checks it, not only retrieval: the zero-shot audit as an example."""
    args = ["--model-json", json.dumps({"backend": "hf", "name": str(tiny_hf)}), "--model-name", "tiny",
            "--dataset-name", "ff", "--images-npy", str(run / "images.npy"), "--images-table",
            str(run / "images.parquet"), "--manifest", str(run / "manifest.parquet"),
            "--out-accuracy", str(run / "accuracy.csv"), "--out-harmful", str(run / "harmful.csv")]
    rc, err = _stage(zeroshot.main, args, capsys)
    assert rc == 0 and (run / "accuracy.csv").is_file()
    np.save(run / "images.npy", np.load(run / "images.npy")[:30])
    rc, err = _stage(zeroshot.main, args, capsys)
    assert rc == 2 and f"{run / 'images.npy'} holds 30 embeddings but {run / 'images.parquet'} lists 42" in err


def test_encoder_refuses_non_finite_outputs_naming_the_images(fairface_dir):
    class NaNEncoder:
        name = "nan"

        def preprocess(self, img):
            import torch

            return torch.zeros(3, 4, 4)

        def encode_images(self, pixels):
            out = np.ones((len(pixels), 4), np.float32)
            out[1] = np.inf
            return out

        def encode_texts(self, texts):
            return np.full((len(texts), 4), np.nan, np.float32)

    manifest, _, _ = data.build_manifest({"type": "fairface", "root": str(fairface_dir)})
    with pytest.raises(VlmbiasError, match=r"non-finite values \(NaN or inf\) for 1 image\(s\): .*"
                       + manifest["path"].iat[1].replace(".", r"\.")):
        embed.embed_images(manifest.head(4), NaNEncoder(), batch_size=4, num_workers=0)
    with pytest.raises(VlmbiasError, match=r"for 2 query text\(s\): a doctor, a nurse"):
        embed.embed_queries("jobs", {"queries": ["a doctor", "a nurse"]}, NaNEncoder())


def test_k_above_the_dataset_is_flagged_and_strict_refuses(run, capsys, caplog):
    retrieve.main(_retrieve_args(run, k=100))
    with caplog.at_level("WARNING"):
        metrics.main(_metrics_args(run, [5, 100]))
    summary = pd.read_csv(run / "summary.csv", keep_default_na=False)
    assert set(summary.loc[summary["k"] == 100, "flags"]) == {"k_above_images"}
    assert set(summary.loc[summary["k"] == 5, "flags"]) == {""}
    assert set(summary.loc[summary["k"] == 100, "n"]) == {42}
    classes = pd.read_csv(run / "classes.csv", keep_default_na=False)
    assert set(classes.loc[classes["k"] == 100, "flags"]) == {"k_above_images"}
    warned = [r.getMessage() for r in caplog.records if "k 100 is more than the 42 images ranked" in r.getMessage()]
    assert len(warned) == 1  # once, not once per query and attribute
    before = _outputs(run)
    rc, err = _stage(metrics.main, _metrics_args(run, [5, 100], "--strict"), capsys)
    assert rc == 2 and "k 100 is more than the 42 images ranked per query" in err and "metrics.strict" in err
    assert _outputs(run) == before


def test_k_above_the_labelled_images_is_flagged():
    """12 images, 4 of them labelled for gender: k 8 fits the rankings but not gender's labels."""
    rankings = pd.DataFrame({"model": "m", "dataset": "d", "query_set": "s", "query_id": "q", "query": "x",
                             "rank": range(1, 13), "gender": ["a", "b", None, None] * 2 + [None] * 4})
    dist = pd.DataFrame({"attribute": "gender", "class": ["a", "b"], "count": [2, 2], "percent": [50.0, 50.0]})
    _, summary = metrics.audit_tables(rankings, dist, [4, 8], n_boot=100)
    assert summary.set_index("k")["flags"].to_dict() == {4: "", 8: "k_above_labelled"}
    assert summary.set_index("k")["n"].to_dict() == {4: 2, 8: 4}
    with pytest.raises(VlmbiasError, match="k 8 is more than the 4 images the dataset labels for 'gender'"):
        metrics.audit_tables(rankings, dist, [4, 8], n_boot=100, strict=True)


def test_an_empty_label_column_is_a_warning_naming_it(fairface_dir, tmp_path, caplog):
    labels = pd.read_csv(fairface_dir / "fairface_label_val.csv").assign(gender="")
    labels.to_csv(tmp_path / "labels.csv", index=False)
    spec = {"type": "labelled-folder", "root": str(fairface_dir), "csv": str(tmp_path / "labels.csv")}
    with caplog.at_level("WARNING"):
        _, dist, _ = data.build_manifest(spec)
    assert "gender" not in set(dist["attribute"])
    assert any("column 'gender' labels no image" in r.getMessage() for r in caplog.records)


def test_stale_temp_files_are_removed_by_the_next_write(tmp_path):
    out = tmp_path / "images.npy"
    legacy = tmp_path / ".images.npy.abcd1234.tmp.npy"  # an older version's name: no owner
    legacy.write_bytes(b"x" * 100)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = io._owner().rsplit(".", 1)[0]
    orphan = tmp_path / f".images.npy.{host}.{dead.stdout.strip()}.zz99zz99.tmp.npy"  # its process is gone
    orphan.write_bytes(b"x")
    live = tmp_path / f".images.npy.{host}.{os.getppid()}.qq11qq11.tmp.npy"  # a live writer's: kept
    live.write_bytes(b"x")
    foreign = tmp_path / ".images.npy.otherhost.12.aa00aa00.tmp.npy"  # another host's, fresh: kept
    foreign.write_bytes(b"x")
    other = tmp_path / ".other.npy.abcd1234.tmp.npy"  # another artifact's: not this write's business
    other.write_bytes(b"x")
    io.write_npy(np.zeros(3, np.float32), out)
    assert not legacy.exists() and not orphan.exists()
    assert live.exists() and foreign.exists() and other.exists()
    old = os.stat(foreign).st_mtime - io.FOREIGN_STALE_SECONDS - 1
    os.utime(foreign, (old, old))
    io.write_npy(np.zeros(3, np.float32), out)
    assert not foreign.exists() and live.exists()


def test_a_write_killed_half_way_leaves_nothing_after_the_next_write(tmp_path):
    """SIGKILL while write_npy streams a large array: the hidden partial file stays until the next
    write of the same artifact removes it."""
    out = tmp_path / "images.npy"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from vlmbias import io
        real = np.save
        def save_then_die(f, arr, **kw):
            f.write(b"partial" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        np.save = save_then_die
        io.write_npy(np.zeros((1000, 8), np.float32), {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".images.npy.") and not out.exists()
    io.write_npy(np.ones((2, 2), np.float32), out)
    assert [p.name for p in tmp_path.iterdir()] == ["images.npy"]
    np.testing.assert_array_equal(io.read_npy(out), np.ones((2, 2)))


def test_a_csv_whose_rows_disagree_with_its_record_is_refused(tmp_path):
    io.write_table(pd.DataFrame({"a": [1, 2, 3]}), tmp_path / "t.csv", meta=io.provenance(3))
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "t.csv", index=False)  # rewritten behind its back
    with pytest.raises(VlmbiasError, match=r"t\.csv holds 2 rows but was written with 3; delete it"):
        io.read_table(tmp_path / "t.csv")
    io.write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")  # a write without a record drops the old one
    assert not io.sidecar_path(tmp_path / "t.csv").exists() and len(io.read_table(tmp_path / "t.csv")) == 1


def test_failed_job_errors_collects_the_sentences_of_recent_logs(tmp_path):
    (tmp_path / "retrieve").mkdir()
    (tmp_path / "retrieve" / "a.log").write_text("2026 INFO x\n2026 ERROR vlmbias: boom\nerror: boom\n")
    (tmp_path / "old.log").write_text("error: from an earlier run\n")
    os.utime(tmp_path / "old.log", (1, 1))
    assert io.failed_job_errors(tmp_path, since=100) == [(tmp_path / "retrieve" / "a.log", "error: boom")]


@pytest.mark.slow
def test_workflow_refuses_a_short_images_npy_on_the_console(tmp_path, tiny_workflow_config):
    """The real Snakefile: after a complete run, images.npy cut to its first 30 rows and retrieve
    forced to rerun. Plain `snakemake --cores N` and the local profile both fail with the sentence
    on the console; the metric tables are untouched."""
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    target = "results/smoke/metrics/ff/tiny/jobs_summary.csv"
    config = tiny_workflow_config(query_sets={"jobs": {"queries": ["a doctor", "a nurse"]}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))

    def snakemake(*args):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
               "--cores", "2", *args, "--", target]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)

    first = snakemake()
    assert first.returncode == 0, first.stderr[-3000:]
    emb = tmp_path / "results/smoke/embeddings/ff/tiny"
    metrics_dir = tmp_path / "results/smoke/metrics/ff/tiny"
    before = {p.name: p.read_bytes() for p in metrics_dir.iterdir()}
    np.save(emb / "images.npy", np.load(emb / "images.npy")[:30])
    rel = "results/smoke/embeddings/ff/tiny"  # the rules name files relative to the working directory
    sentence = f"error: {rel}/images.npy holds 30 embeddings but {rel}/images.parquet lists 42 images"
    for extra in ([], ["--profile", str(repo / "profiles/local")]):
        run = snakemake("--forcerun", "retrieve", *extra)
        assert run.returncode != 0
        assert sentence in run.stderr, run.stderr[-3000:]
        log = (tmp_path / "results/smoke/logs/retrieve/ff_tiny_jobs.log").read_text()
        assert sentence in log and "Traceback" not in log
        assert {p.name: p.read_bytes() for p in metrics_dir.iterdir()} == before
