"""Many models in one run: `expand` entries (one model per open_clip (arch, tag) pair matching a
pattern) and the model leaderboard across them. Offline: tiny architectures registered from JSON
configs, their pretrained tags pointing at safetensors files made here."""
import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlmbias import VlmbiasError
from vlmbias.audit.expand import expand_models
from vlmbias.audit.leaderboard import mean_interval, model_leaderboard
from vlmbias.encoders.models import load_encoder
from vlmbias.config import leaderboard_models, validate
from vlmbias.testing import make_tiny_open_clip_tags

REPO = Path(__file__).resolve().parents[1]
TINY = ["vlmbias-tiny-a.s1", "vlmbias-tiny-a.s2", "vlmbias-tiny-b.s1"]


@pytest.fixture(scope="module")
def tiny_tags(tmp_path_factory):
    """Two tiny architectures, three local pretrained tags: a:s1, a:s2, b:s1."""
    return make_tiny_open_clip_tags(tmp_path_factory.mktemp("oc_tags"),
                                    {"vlmbias-tiny-a": ["s1", "s2"], "vlmbias-tiny-b": ["s1"]})


def family(tiny_tags, **expand):
    return {"backend": "open_clip", "expand": {"arch": "vlmbias-tiny-*", **expand}, **copy.deepcopy(tiny_tags)}


def expanded(models: dict, **rest) -> dict:
    config = {"models": copy.deepcopy(models), **rest}
    expand_models(config)
    return config


# ---------------------------------------------------------------- expansion

def test_patterns_expand_to_one_model_per_pair(tiny_tags):
    assert list(expanded({"fam": family(tiny_tags)})["models"]) == TINY
    assert list(expanded({"fam": family(tiny_tags, pretrained="s1")})["models"]) == [TINY[0], TINY[2]]
    assert list(expanded({"fam": family(tiny_tags, exclude=["*-b:*"])})["models"]) == TINY[:2]
    assert list(expanded({"fam": family(tiny_tags, arch=["vlmbias-tiny-b", "vlmbias-tiny-a"], pretrained=["s2", "s1"])})
                ["models"]) == TINY  # open_clip's order, not the patterns'
    spec = expanded({"fam": family(tiny_tags, precision="bf16")})["models"]["vlmbias-tiny-a.s2"]
    assert spec == {"backend": "open_clip", "name": "vlmbias-tiny-a", "pretrained": "s2", "config": tiny_tags["config"],
                    "tags": {"vlmbias-tiny-a:s2": tiny_tags["tags"]["vlmbias-tiny-a:s2"]}}  # its own tag only


def test_real_open_clip_tags_expand_in_its_order():
    # open_clip 3.3.0 (pinned in envs/audit.yaml) has exactly these ViT-B-32 laion2b tags
    config = expanded({"b32": {"backend": "open_clip", "expand": {"arch": "ViT-B-32", "pretrained": "laion2b*"}},
                       "mine": {"backend": "hf", "name": "x"}}, audit={"models": ["mine", "b32"]},
                      zeroshot={"models": ["b32"]})
    assert list(config["models"]) == ["ViT-B-32.laion2b_e16", "ViT-B-32.laion2b_s34b_b79k", "mine"]
    assert config["audit"]["models"] == ["mine", "ViT-B-32.laion2b_e16", "ViT-B-32.laion2b_s34b_b79k"]
    assert config["zeroshot"]["models"] == ["ViT-B-32.laion2b_e16", "ViT-B-32.laion2b_s34b_b79k"]
    everything = expanded({"all": {"backend": "open_clip", "expand": {"arch": "*"}}})["models"]
    import open_clip
    assert len(everything) == len(open_clip.list_pretrained()) > 100


def test_expanded_models_load_through_the_tag_path(tiny_tags):
    models = expanded({"fam": family(tiny_tags)})["models"]
    texts = {}
    for name, spec in models.items():
        enc = load_encoder(copy.deepcopy(spec))
        saved = load_file(spec["tags"][f"{spec['name']}:{spec['pretrained']}"])
        assert all(torch.equal(v, saved[k]) for k, v in enc.module.state_dict().items()), name
        texts[name] = enc.encode_texts(["a doctor"])[0]
    assert texts[TINY[0]].shape != texts[TINY[2]].shape or not np.allclose(texts[TINY[0]], texts[TINY[2]])
    assert not np.allclose(texts[TINY[0]], texts[TINY[1]])  # same architecture, other weights


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["fam"]["expand"].update(arch="vlmbias-tiny-z*"),
     r"models.fam.expand.arch: pattern 'vlmbias-tiny-z\*' matches no open_clip architecture .*'vlmbias-tiny-"),
    (lambda m: m["fam"]["expand"].update(arch="vit-b-32"),
     r"pattern 'vit-b-32' matches no .*case-sensitive; e.g. \['ViT-B-32'"),
    (lambda m: m["fam"]["expand"].update(pretrained=["s1", "s9"]),
     r"models.fam.expand.pretrained: pattern 's9' matches no tag of the architectures \['vlmbias-tiny-\*'\] \(their tags include \['s2', 's1'\]"),
    (lambda m: m["fam"]["expand"].update(exclude=["s1"]),
     r"expand.exclude: pattern 's1' excludes nothing .*'<arch>:<tag>'"),
    (lambda m: m["fam"]["expand"].update(exclude=["*"]), r"models.fam.expand: `exclude` \['\*'\] leaves no model"),
    (lambda m: m.update({"vlmbias-tiny-a.s2": {"backend": "hf", "name": "x"}}),
     r"models.fam \(expand\) gives the model name 'vlmbias-tiny-a.s2', which models.vlmbias-tiny-a.s2 already names"),
    (lambda m: m.update(again={"backend": "open_clip", "expand": {"arch": "vlmbias-tiny-b"}, **m["fam"]}),
     r"models.again \(expand\) gives the model name 'vlmbias-tiny-a.s1', which models.fam \(expand\) already names"),
    (lambda m: m["fam"].update(backend="hf"), r"models.fam: `expand` .* needs backend open_clip, not 'hf'"),
    (lambda m: m["fam"].update(pretrained="openai"), r"models.fam: an `expand` entry .* remove \['pretrained'\]"),
    (lambda m: m["fam"]["tags"].update({"vlmbias-tiny-a:s3": "/x/w.bin"}), r"models.fam.tags: .* not a .safetensors"),
    (lambda m: m["fam"]["tags"].update({"vlmbias-tiny-a:S-3": "/x/w.safetensors"}), r"must be written .*: 's_3'"),
    (lambda m: m["fam"]["tags"].update({"ViT-B-32:openai": m["fam"]["tags"]["vlmbias-tiny-a:s1"]}),
     r"ViT-B-32:openai is already an open_clip pretrained tag"),
    (lambda m: m["fam"]["tags"].update({"nope-arch:s1": m["fam"]["tags"]["vlmbias-tiny-a:s1"]}),
     r"architecture 'nope-arch' is neither an open_clip model nor defined by the entry's `config`"),
])
def test_bad_patterns_and_collisions_are_named(tiny_tags, edit, message):
    models = {"fam": family(tiny_tags)}
    edit(models)
    with pytest.raises(VlmbiasError, match=message):
        expanded(models)


def test_single_model_reference_to_an_entry_is_an_error(tiny_tags):
    with pytest.raises(VlmbiasError, match=r"mitigation.base_model names 'fam', an `expand` entry of 3 models; "
                                           r"name one of them, e.g. \['vlmbias-tiny-a.s1'"):
        expanded({"fam": family(tiny_tags)}, mitigation={"base_model": "fam"})


def test_validate_expands_then_checks(tiny_workflow_config, tiny_tags):
    config = tiny_workflow_config(models={"fam": family(tiny_tags)}, leaderboard={"k": 20})
    validate(config)
    assert list(config["models"]) == TINY and leaderboard_models(config) == TINY
    validate(config)  # idempotent: what it wrote validates again, unchanged
    assert list(config["models"]) == TINY
    one = tiny_workflow_config()
    validate(one)
    assert leaderboard_models(one) == []  # one model: no leaderboard
    with pytest.raises(VlmbiasError, match=r"leaderboard.k 7 is not among retrieval.k \[5, 20\]"):
        validate(tiny_workflow_config(leaderboard={"k": 7}))
    with pytest.raises(VlmbiasError, match=r"at models.fam.expand: 'arch' is a required property"):
        validate(tiny_workflow_config(models={"fam": {"backend": "open_clip", "expand": {"pretrained": "*"}}}))


# ---------------------------------------------------------------- the leaderboard table

def test_mean_interval_by_hand():
    # values 0.2 [0.1, 0.3] (SE 0.1/1.96) and 0.4 [0.2, 0.7] (SE 0.3/1.96, the wider side); NaN left out
    mean, lo, hi, n = mean_interval([0.2, 0.4, np.nan], [0.1, 0.2, np.nan], [0.3, 0.7, np.nan])
    half = math.sqrt(0.1 ** 2 + 0.3 ** 2) / 2
    assert n == 2 and mean == pytest.approx(0.3) and (lo, hi) == pytest.approx((0.3 - half, 0.3 + half))
    assert mean_interval([np.nan], [np.nan], [np.nan])[3] == 0


def _summary(model, qset, rows):
    """Summary rows (query_id, attribute, max_skew_uniform, low, high) at k=20, plus other-k noise."""
    out = []
    for qid, attr, v, lo, hi in rows:
        for k, scale in ((20, 1.0), (5, 9.0)):
            r = {"dataset": "ff", "model": model, "query_set": qset, "query_id": qid, "k": k, "attribute": attr,
                 "skew_convention": "published", "interval_method": "bootstrap-normal"}
            for m in ("max_skew_uniform", "ndkl_uniform", "tvd"):
                r.update({m: v * scale, f"{m}_low": lo * scale, f"{m}_high": hi * scale})
            out.append(r)
    return pd.DataFrame(out)


def test_leaderboard_rows_and_numbers_by_hand():
    summary = pd.concat([
        _summary("m1", "jobs", [("q1", "gender", 0.2, 0.1, 0.3), ("q2", "gender", 0.4, 0.2, 0.7),
                                ("q1", "race", 0.5, 0.5, 0.5), ("q2", "race", np.nan, np.nan, np.nan)]),
        _summary("m2", "jobs", [("q1", "gender", 0.05, 0.0, 0.15), ("q2", "gender", 0.05, 0.0, 0.15),
                                ("q1", "race", 0.0, 0.0, 0.0), ("q2", "race", 0.1, 0.0, 0.2)]),
    ], ignore_index=True)
    board = model_leaderboard(summary, 20, {"m1": "A:x", "m2": "B:y"})
    assert list(board["model"]) == ["m1", "m2"] and list(board["model_id"]) == ["A:x", "B:y"]
    assert list(board["queries"]) == [2, 2] and list(board["race_queries"]) == [1, 2]
    m1, m2 = board.iloc[0], board.iloc[1]
    half = math.sqrt(0.1 ** 2 + 0.3 ** 2) / 2
    assert (m1["gender_max_skew_uniform"], m1["gender_max_skew_uniform_low"], m1["gender_max_skew_uniform_high"]) \
        == pytest.approx((0.3, 0.3 - half, 0.3 + half))
    assert m1["race_tvd"] == 0.5 and m1["race_tvd_low"] == m1["race_tvd_high"] == 0.5
    # m2 gender: 0.05 +- 1.96 * sqrt(2 * (0.1/1.96)^2) / 2 = 0.05 +- 0.0707, clipped at 0 (no metric is negative)
    assert m2["gender_max_skew_uniform_high"] == pytest.approx(0.05 + math.sqrt(2) * 0.1 / 2)
    assert m2["gender_max_skew_uniform_low"] == m2["gender_tvd_low"] == m2["gender_ndkl_uniform_low"] == 0.0
    assert mean_interval([0.05, 0.05], [0.0, 0.0], [0.15, 0.15])[1] == pytest.approx(0.05 - math.sqrt(2) * 0.1 / 2)
    assert m2["skew_convention"] == "published" and set(board["k"]) == {20}
    with pytest.raises(VlmbiasError, match=r"no rows at k=50 \(they have k \[5, 20\]\)"):
        model_leaderboard(summary, 50)
    with pytest.raises(VlmbiasError, match="appears twice"):
        model_leaderboard(pd.concat([summary, summary]), 20)
    with pytest.raises(VlmbiasError, match=r"lack column\(s\) \['tvd'"):
        model_leaderboard(summary.drop(columns=["tvd"]), 20)


# ---------------------------------------------------------------- the workflow, three tiny models

def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--quiet", "rules", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=1800)


@pytest.mark.slow
def test_run_over_three_tiny_models_ends_in_one_leaderboard(tmp_path, tiny_workflow_config, tiny_tags):
    config = tiny_workflow_config(models={"tiny-family": family(tiny_tags)})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = tmp_path / "results" / "smoke"
    for model in TINY:  # one embedding per expanded model, each from its own tag's weights
        assert (res / "embeddings/ff" / model / "images.npy").is_file()
    board = pd.read_csv(res / "leaderboard/models.csv")
    assert len(board) == 3 * 2 and set(board["k"]) == {20}  # models x query sets, the largest k
    assert list(board["model"]) == [m for m in TINY for _ in range(2)]
    assert set(board["model_id"]) == {"vlmbias-tiny-a:s1", "vlmbias-tiny-a:s2", "vlmbias-tiny-b:s1"}
    for r in board.itertuples():
        s = pd.read_csv(res / "metrics/ff" / r.model / f"{r.query_set}_summary.csv")
        s = s[s["k"] == 20]
        assert r.queries == s["query_id"].nunique()
        for attr in ("gender", "race", "age"):
            for m in ("max_skew_uniform", "ndkl_uniform", "tvd"):
                vals = s.loc[s["attribute"] == attr, m]
                assert getattr(r, f"{attr}_{m}") == pytest.approx(vals.mean(), rel=1e-12, abs=1e-15)
                assert getattr(r, f"{attr}_{m}_low") <= getattr(r, f"{attr}_{m}") <= getattr(r, f"{attr}_{m}_high")
    assert not np.allclose(board.loc[0, "gender_ndkl_uniform"], board.loc[2, "gender_ndkl_uniform"])  # other weights
    assert (res / "leaderboard/models.png").stat().st_size > 10_000
    assert "model leaderboard: 3 models x 2 query sets at k=20" in (res / "logs/model_leaderboard.log").read_text()
    # zero-shot, when configured, plans one job per expanded model too
    config["zeroshot"] = {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "-n")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert re.search(r"^zeroshot\s+3$", plan.stdout, re.M), plan.stdout[-3000:]  # the three models, nothing else
    assert not re.search(r"^(embed_images|metrics)\s", plan.stdout, re.M)
