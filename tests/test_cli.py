"""The `vlmbias` command line: audit, calibrate, models, --version (offline, tiny models)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlmbias import VlmbiasError, __version__
from vlmbias.cli import main
from vlmbias.cli.audit import parse_model_spec
from vlmbias.cli.cache import cache_key

CLASS_ROW = re.compile(r"^    (\S.*?)\s+(\d+)\s+[\d.]+%\s+\[[\d.]+, [\d.]+\]\s+[\d.]+%$")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vlmbias_cache")


def audit_args(tiny_hf, fairface_dir, cache, *extra):
    return ["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(fairface_dir), "--cache", str(cache),
            "--workers", "0", "--n-boot", "200", *extra]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def parse_report(text: str) -> dict:
    """{query: {attribute: {class: count}}} from the text report."""
    out, query, attr = {}, None, None
    for line in text.splitlines():
        if line.startswith("== "):
            query = re.match(r"== '(.*)'", line).group(1)
            out[query] = {}
        elif query and re.match(r"^  \S+\s+count\s+share", line):
            attr = line.split()[0]
            out[query][attr] = {}
        elif query and attr and (m := CLASS_ROW.match(line)):
            out[query][attr][m.group(1)] = int(m.group(2))
    return out


# ---------------------------------------------------------------- --model syntax

@pytest.mark.parametrize("text, spec", [
    ("ViT-B-32:openai", {"backend": "open_clip", "name": "ViT-B-32", "pretrained": "openai"}),
    ("open_clip:RN50:openai", {"backend": "open_clip", "name": "RN50", "pretrained": "openai"}),
    ("open_clip:ViT-B-32:/no/such:ckpt.pt", {"backend": "open_clip", "name": "ViT-B-32", "pretrained": "/no/such:ckpt.pt"}),
    ("hf:openai/clip-vit-base-patch32", {"backend": "hf", "name": "openai/clip-vit-base-patch32"}),
    ("hf:/no/model+adapter=/no/adapter", {"backend": "hf", "name": "/no/model", "adapter": "/no/adapter"}),
])
def test_model_spec_forms(text, spec):
    assert parse_model_spec(text) == spec


def test_model_spec_local_paths_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_model_spec("hf:m+adapter=a") == {"backend": "hf", "name": str(tmp_path / "m"),
                                                  "adapter": str(tmp_path / "a")}


@pytest.mark.parametrize("text, why", [
    ("ViT-B-32", "exactly one ':'"),
    ("openai/clip-vit-base-patch32", "did you mean hf:openai/clip-vit-base-patch32"),
    ("ViT-B-32:openai:extra", "exactly one ':'"),
    ("open_clip:ViT-B-32", "need both a NAME and a PRETRAINED"),
    ("hf:", "no model id or directory"),
    ("hf:x+adaptor=y", "unknown option '\\+adaptor='"),
    ("hf:x+adapter=", "adapter directory after"),
    (":openai", "exactly one ':'"),
    ("", "it is empty"),
])
def test_malformed_model_is_one_error_line(text, why, fairface_dir, capsys):
    with pytest.raises(VlmbiasError, match=why):
        parse_model_spec(text)
    assert main(["audit", "--model", text, "--dataset", str(fairface_dir), "--query", "a doctor"]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "accepted forms" in err and "Traceback" not in err


# ---------------------------------------------------------------- audit

def test_audit_prints_tables_for_each_query(tiny_hf, fairface_dir, cache, capsys):
    rc = main(audit_args(tiny_hf, fairface_dir, cache, "--query", "a doctor", "--query", "a nurse",
                         "--k", "20", "--attributes", "gender", "race", "--template", "a photo of {}"))
    out = capsys.readouterr().out
    assert rc == 0
    report = parse_report(out)
    assert list(report) == ["a doctor", "a nurse"]
    for query, attrs in report.items():
        assert list(attrs) == ["gender", "race"]
        assert list(attrs["gender"]) == ["Male", "Female"]
        assert len(attrs["race"]) == 7
        for counts in attrs.values():
            assert sum(counts.values()) == 20
    # summary metrics with intervals, once per (query, attribute)
    assert out.count("RD of top class") == 2
    # (an FD upper end is "inf" where a class may be absent from the top k: unbounded, not a large number)
    assert len(re.findall(r"^  (gender|race)\s+20\s+[\d.]+ \[[\d.]+, (?:[\d.]+|inf)\]", out, re.M)) == 4
    assert "encoded: a photo of a doctor" in out


def test_second_run_uses_cache_and_json(tiny_hf, fairface_dir, tmp_path, monkeypatch, capsys):
    import vlmbias.audit.embed

    calls = []
    real = vlmbias.audit.embed.embed_images
    monkeypatch.setattr(vlmbias.audit.embed, "embed_images", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setenv("VLMBIAS_CACHE", str(tmp_path / "envcache"))  # no --cache: the variable decides
    args = ["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(fairface_dir), "--workers", "0",
            "--n-boot", "100", "--query", "a doctor", "--query", "a CEO", "--k", "10", "--json"]

    assert main(args) == 0
    first = capsys.readouterr()
    assert calls == [1] and "using cached image embeddings" not in first.err
    assert main(args) == 0
    second = capsys.readouterr()
    assert calls == [1], "the second run re-embedded the images"
    assert "using cached image embeddings" in second.err

    a, b = json.loads(first.out), json.loads(second.out)
    assert (a["cache"]["hit"], b["cache"]["hit"]) == (False, True)
    assert a["cache"]["key"] == b["cache"]["key"]
    assert a["queries"] == b["queries"]
    entry = Path(b["cache"]["path"])
    assert entry.parent.parent == tmp_path / "envcache"
    emb = np.load(entry / "images.npy", allow_pickle=False)
    rows = pd.read_parquet(entry / "images.parquet")
    assert emb.shape[0] == len(rows) == b["dataset"]["n_images"] == 42
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    q = b["queries"][0]
    assert q["query"] == "a doctor" and q["n"] == 10
    for attr in ("gender", "race", "age"):  # default: every attribute of the dataset
        t = q["attributes"][attr]
        assert sum(c["count"] for c in t["classes"]) == 10
        s = t["summary"]
        # fd_high is "inf" in the JSON where FD is unbounded (a class may be absent)
        assert s["fd_low"] <= s["fd"] <= float(s["fd_high"]) and 0 < s["p_value"] <= 1
    json.loads(second.out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    # a damaged cache entry is ignored and rewritten, not trusted
    (entry / "images.npy").write_bytes(b"garbage")
    assert main(args) == 0
    third = capsys.readouterr()
    assert calls == [1, 1] and "ignoring unusable cache entry" in third.err
    assert json.loads(third.out)["queries"] == a["queries"]


def test_cache_key_tracks_images_model_and_precision(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x")
    manifest = pd.DataFrame({"image_id": ["a.jpg"], "path": [str(img)]})
    model = {"backend": "hf", "name": "some/model"}
    key = cache_key(model, manifest, "fp32")
    assert key == cache_key(dict(model), manifest.copy(), "fp32")
    assert key != cache_key(model, manifest, "bf16")
    assert key != cache_key({**model, "adapter": "/x"}, manifest, "fp32")
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert key != cache_key(model, manifest, "fp32")


def test_k_larger_than_dataset_and_labelled_folder(tiny_hf, fairface_dir, cache, capsys):
    rc = main(audit_args(tiny_hf, fairface_dir, cache, "--query", "a nurse", "--k", "100",
                         "--dataset-type", "labelled-folder", "--csv", str(fairface_dir / "fairface_label_val.csv"),
                         "--attributes", "gender"))
    out, err = capsys.readouterr()
    assert rc == 0
    assert "the dataset has only 42 images" in out
    assert parse_report(out) == {"a nurse": {"gender": {"Female": 21, "Male": 21}}}  # classes sorted: from the CSV
    assert "vlmbias: k 100 is more than the 42 images ranked per query" in err  # the workflow's warning too
    rc = main(audit_args(tiny_hf, fairface_dir, cache, "--query", "a nurse", "--k", "100", "--strict"))
    err = capsys.readouterr().err
    assert rc == 2 and error_lines(err) == [
        "error: k 100 is more than the 42 images ranked per query (the dataset's size or the rankings' depth), so "
        "its rows measure at most 42; lower k, or turn strictness off (metrics.strict, vlmbias audit --strict)"]


def test_an_empty_label_column_is_named_not_dropped_silently(tiny_hf, fairface_dir, cache, tmp_path, capsys):
    labels = pd.read_csv(fairface_dir / "fairface_label_val.csv").assign(gender="")
    labels.to_csv(tmp_path / "labels.csv", index=False)
    rc = main(audit_args(tiny_hf, fairface_dir, cache, "--query", "a nurse", "--k", "10", "--dataset-type",
                         "labelled-folder", "--csv", str(tmp_path / "labels.csv"), "--json"))
    out, err = capsys.readouterr()
    assert rc == 0 and "gender" not in json.loads(out)["attributes"]
    assert "column 'gender' labels no image (every entry is empty)" in err


@pytest.mark.parametrize("change, message", [
    ({"--dataset": "MISSING"}, "dataset folder not found"),
    ({"--query": ""}, "--query number 1 is empty"),
    ({"--query": "   "}, "--query number 1 is empty"),
    ({"--dataset-type": "fairface", "--query": "a doctor", "--k": "-3"}, "--k must be at least 1"),
    ({"--attributes": "religion"}, "unknown attribute(s) religion; this dataset has gender, race, age"),
    ({"--template": "a photo of"}, "must contain exactly one '{}'"),
    ({"--k": "0"}, "--k must be at least 1"),
    ({"--dataset-type": "labelled-folder"}, "needs --csv"),
    ({"--query-set": "berg2022:berg2022_test"}, "give either --query"),
    ({"--query": None, "--query-set": "berg2021:x"}, "unknown preset 'berg2021'"),
    ({"--query": None, "--query-set": "berg2022:nope"}, "has no query set 'nope'"),
])
def test_user_errors_are_one_line_exit_2(change, message, tiny_hf, fairface_dir, cache, tmp_path, capsys):
    opts = {"--model": f"hf:{tiny_hf}", "--dataset": str(fairface_dir), "--query": "a doctor",
            "--cache": str(cache), **change}
    if opts["--dataset"] == "MISSING":
        opts["--dataset"] = str(tmp_path / "no-such-folder")
    argv = ["audit"] + [x for kv in opts.items() if kv[1] is not None for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [error_lines(err)[0]] and message in error_lines(err)[0]
    assert "Traceback" not in err


def test_repeated_query_is_an_error(fairface_dir, capsys):
    assert main(["audit", "--model", "ViT-B-32:openai", "--dataset", str(fairface_dir),
                 "--query", "a doctor", "--query", "a doctor "]) == 2
    assert error_lines(capsys.readouterr().err) == ["error: --query 'a doctor' is given more than once"]


def test_plain_folder_needs_csv(tmp_path, capsys):
    assert main(["audit", "--model", "ViT-B-32:openai", "--dataset", str(tmp_path), "--query", "a doctor"]) == 2
    assert "--dataset-type labelled-folder --csv" in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys):
    assert main(["audit", "--dataset", "x", "--query", "q"]) == 2  # --model missing
    assert "--model" in capsys.readouterr().err
    assert main(["audit", "--model", "a:b", "--dataset", "x", "--query", "q", "--k", "many"]) == 2
    assert main([]) == 2


def test_help_and_version(capsys):
    for cmd in (["--help"], ["audit", "--help"], ["calibrate", "--help"], ["models", "--help"]):
        assert main(cmd) == 0
        assert "examples:" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vlmbias {__version__}"


# ---------------------------------------------------------------- models

def test_models_lists_backends_without_weights_or_network(monkeypatch, capsys):
    import socket

    import open_clip

    def no_network(*a, **kw):
        raise AssertionError("vlmbias models touched the network")

    def no_weights(*a, **kw):
        raise AssertionError("vlmbias models loaded a model")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_weights)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "backends: open_clip, hf" in out
    assert "ViT-B-32:openai" in out and "hf:openai/clip-vit-base-patch32" in out
    assert main(["models", "--name", "ViT-B-32"]) == 0
    out = capsys.readouterr().out
    assert "pretrained tags of ViT-B-32" in out and "  ViT-B-32:laion2b_s34b_b79k" in out
    assert main(["models", "--name", "ViT-B-33"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err)[0].startswith("error: unknown open_clip model 'ViT-B-33'") and "ViT-B-32" in err


# ---------------------------------------------------------------- calibrate

def write_checks(results: Path, model: str, passed: list[bool]) -> Path:
    path = results / "calibration" / model / "checks.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"check": [f"check_{i}" for i in range(len(passed))], "value": [0.95, 3, 0.1][:len(passed)],
                  "threshold": [0.9, 3, 0.2][:len(passed)], "passed": passed,
                  "detail": ["a doctor [Male] planted 0.80 measured 0.83", "", "x"][:len(passed)]}).to_csv(path, index=False)
    return path


def test_calibrate_all_pass(tmp_path, capsys):
    write_checks(tmp_path, "world-clip", [True, True])
    assert main(["calibrate", "--results", str(tmp_path), "--model", "world-clip"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"PASS\s+check_0\s+value 0.95\s+threshold 0.9", out)
    assert "planted 0.80 measured 0.83" in out and "2 of 2 checks passed" in out and "FAIL" not in out


def test_calibrate_failure_exit_1(tmp_path, capsys):
    write_checks(tmp_path, "world-clip", [True, False, True])
    write_checks(tmp_path, "other", [True])
    assert main(["calibrate", "--results", str(tmp_path)]) == 1  # every calibrated model by default
    out = capsys.readouterr().out
    assert re.search(r"FAIL\s+check_1", out) and len(re.findall(r"PASS\s+check_", out)) == 3
    assert "2 of 3 checks passed; FAILED: check_1" in out and "calibration checks of other" in out
    assert main(["calibrate", "--results", str(tmp_path), "--model", "other"]) == 0


def test_calibrate_missing_file_hints_snakemake(tmp_path, capsys):
    assert main(["calibrate", "--results", str(tmp_path), "--model", "world-clip"]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "snakemake --cores 8" in err
    assert str(tmp_path / "calibration" / "world-clip" / "checks.csv") in err
    assert main(["calibrate", "--results", str(tmp_path)]) == 2
    assert "snakemake --cores 8" in capsys.readouterr().err


def test_calibrate_malformed_file(tmp_path, capsys):
    path = tmp_path / "calibration" / "m" / "checks.csv"
    path.parent.mkdir(parents=True)
    path.write_text("check,verdict\na,ok\n")
    assert main(["calibrate", "--results", str(tmp_path)]) == 2
    assert "lacks column(s) ['passed']" in capsys.readouterr().err


# ---------------------------------------------------------------- as installed: a separate process

def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("vlmbias")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vlmbias.cli"]


def test_console_script_end_to_end(tiny_hf, fairface_dir, cache, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(_console_script() + audit_args(tiny_hf, fairface_dir, cache, "--query", "a doctor",
                                                        "--k", "5", "--attributes", "gender", "--json"),
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert sum(c["count"] for c in res["queries"][0]["attributes"]["gender"]["classes"]) == 5

    bad = subprocess.run([sys.executable, "-m", "vlmbias.cli", "audit", "--model", "hf:x+color=red",
                          "--dataset", str(fairface_dir), "--query", "a doctor"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and bad.stderr.startswith("error: malformed --model")


def test_audit_with_a_literature_preset(tiny_hf, fairface_dir, cache, capsys):
    assert main(audit_args(tiny_hf, fairface_dir, cache, "--query-set", "berg2022:berg2022_train", "--k", "5",
                           "--json")) == 0
    res = json.loads(capsys.readouterr().out)
    assert [q["query"] for q in res["queries"]][:2] == ["a photo of a good person", "a photo of a evil person"]
    assert len(res["queries"]) == 10
