"""Dataset type `part`: a seeded, stratified split of one dataset into a reference part and an
evaluation part, and the config rules that keep BendVLM's reference part apart from the audited one."""
import copy
import logging

import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias import config as vconfig
from vlmbias.audit.data import build_manifest
from vlmbias.audit.parts import keep_part, reference_mask


def _manifest():
    """Strata of uneven sizes: gender x race with 1..8 images each (image ids in no particular order)."""
    rows, n = [], 0
    for g in ("Male", "Female"):
        for r_i, race in enumerate(("A", "B", "C", "D")):
            for _ in range(1 + r_i + 4 * (g == "Female")):
                n += 1
                rows.append({"image_id": f"img{(n * 37) % 101:03d}", "path": f"/x/{n}.jpg", "gender": g, "race": race})
    return pd.DataFrame(rows)


def _parts(manifest, **kw):
    ref = keep_part(manifest, {"part": "reference", **kw})
    ev = keep_part(manifest, {"part": "evaluation", **kw})
    return ref, ev


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.75])
def test_the_two_parts_are_disjoint_cover_the_parent_and_keep_each_stratum_in_proportion(fraction):
    m = _manifest()
    ref, ev = _parts(m, fraction=fraction, seed=1, stratify=["gender", "race"])
    assert not set(ref["image_id"]) & set(ev["image_id"])
    assert sorted([*ref["image_id"], *ev["image_id"]]) == sorted(m["image_id"])
    assert len(ref) == int(fraction * len(m) + 0.5)  # round(fraction * N) in the reference part
    n = m.groupby(["gender", "race"]).size()
    kept = ref.groupby(["gender", "race"]).size().reindex(n.index, fill_value=0)
    assert ((kept - fraction * n).abs() < 1).all(), pd.DataFrame({"n": n, "kept": kept})
    assert ref["image_id"].is_monotonic_increasing and ev["image_id"].is_monotonic_increasing
    assert list(ref.columns) == list(m.columns)  # the parent's ids, paths and labels


def test_the_split_is_deterministic_seeded_and_independent_of_row_order():
    m = _manifest()
    first = reference_mask(m, 0.5, 7, ["gender", "race"])
    again = reference_mask(m, 0.5, 7, ["gender", "race"])
    assert first.equals(again)
    shuffled = m.sample(frac=1, random_state=3)
    assert set(m.loc[first, "image_id"]) == set(shuffled.loc[reference_mask(shuffled, 0.5, 7, ["gender", "race"]),
                                                             "image_id"])
    other = reference_mask(m, 0.5, 8, ["gender", "race"])
    assert set(m.loc[first, "image_id"]) != set(m.loc[other, "image_id"])
    assert first.sum() == other.sum() == 18  # 36 images, half of them


def test_known_counts_per_stratum():
    # two strata of 4 split 2 + 2; three singletons: the reference part gets round(0.5 * 11) = 6 in all,
    # so two of the singletons (chosen by the seed) go with it
    m = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(11)],
                      "g": ["a"] * 4 + ["b"] * 4 + ["c", "d", "e"]})
    for seed in range(5):
        mask = reference_mask(m, 0.5, seed, ["g"])
        assert m[mask].groupby("g").size().reindex(list("abcde"), fill_value=0).tolist()[:2] == [2, 2]
        assert mask.sum() == 6 and m.loc[mask, "g"].isin(["c", "d", "e"]).sum() == 2
    # without strata, a plain seeded draw of the same size
    assert reference_mask(m, 0.5, 0, []).sum() == 6


def test_stratify_defaults_to_every_attribute_and_unknown_attributes_are_named():
    m = _manifest()
    assert reference_mask(m, 0.5, 1).equals(reference_mask(m, 0.5, 1, ["gender", "race"]))
    with pytest.raises(VlmbiasError, match=r"stratify names \['age'\].*attributes: \['gender', 'race'\]"):
        reference_mask(m, 0.5, 1, ["age"])
    with pytest.raises(VlmbiasError, match="strictly between 0 and 1"):
        reference_mask(m, 1.0, 1)


# ------------------------------------------------------------------ manifests of parts, through the config

def _config(root):
    return {
        "seed": 3,
        "datasets": {"all": {"type": "fairface", "root": str(root)},
                     "faces": {"type": "part", "of": "all", "part": "evaluation", "stratify": ["gender", "race"]},
                     "faces-ref": {"type": "part", "of": "all", "part": "reference", "stratify": ["gender", "race"]}},
        "models": {"clip": {"backend": "hf", "name": "x"}},
        "query_sets": {"jobs": {"queries": ["a doctor", "a nurse", "a pilot"]}},
        "audit": {"datasets": ["faces"]},
        "mitigation": {"base_model": "clip", "dataset": "faces", "query_sets": ["jobs"],
                       "split": {"held_out": ["pilot"]},
                       "methods": {"bend": {"kind": "bendvlm", "reference": "faces-ref"}}},
    }


def test_part_manifests_of_a_fairface_folder(fairface_dir, caplog):
    cfg = _config(fairface_dir)
    vconfig.validate(cfg)
    spec = vconfig.dataset_spec(cfg, "faces-ref")
    assert spec["of"] == {"type": "fairface", "root": str(fairface_dir)}
    assert (spec["fraction"], spec["seed"]) == (0.5, 3)  # the top-level seed
    whole, _, _ = build_manifest(vconfig.dataset_spec(cfg, "all"))
    with caplog.at_level(logging.INFO, logger="vlmbias"):
        ref, ref_dist, _ = build_manifest(spec)
    assert "part reference: kept 21 of 42 images" in caplog.text
    ev, ev_dist, _ = build_manifest(vconfig.dataset_spec(cfg, "faces"))
    assert set(ref["image_id"]).isdisjoint(ev["image_id"])
    assert sorted([*ref["image_id"], *ev["image_id"]]) == whole["image_id"].tolist()
    assert ref.merge(whole, on=list(whole.columns)).shape[0] == len(ref)  # ids, paths and labels are the parent's
    # each gender x race cell of 3 gives the reference part 1 or 2; a part's distribution is its own mix
    cells = ref.groupby(["gender", "race"]).size()
    assert len(cells) == 14 and cells.isin([1, 2]).all()
    counts = ref_dist.set_index(["attribute", "class"])["count"] + ev_dist.set_index(["attribute", "class"])["count"]
    assert (counts.loc["gender"] == 21).all() and ref_dist["count"].groupby(ref_dist["attribute"]).sum().eq(21).all()


def test_a_part_of_a_world_dataset_resolves_the_world_and_its_data_folder():
    cfg = {"world": {}, "datasets": {"w": {"type": "fairface", "world": True},
                                     "w-ref": {"type": "part", "of": "w", "part": "reference", "seed": 5}}}
    spec = vconfig.dataset_spec(cfg, "w-ref")
    assert spec["of"] == {"type": "fairface", "root": f"{vconfig.world_data_dir(cfg)}/fairface"}
    assert spec["seed"] == 5 and vconfig.uses_world_data(cfg, "w-ref")
    assert vconfig.dataset_type(cfg, "w-ref") == "fairface"


def test_a_missing_parent_folder_is_named_by_the_dry_run_check(tmp_path):
    cfg = _config(tmp_path / "nowhere")
    vconfig.validate(cfg)
    with pytest.raises(VlmbiasError, match=r"datasets\.all\.root: folder .*nowhere not found"):
        vconfig.check_paths(cfg)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"]["faces"].update(of="nope"), r"datasets\.faces\.of 'nope' is not a configured dataset"),
    (lambda c: c["datasets"]["faces"].update(of="faces"), r"datasets\.faces\.of names the part itself"),
    (lambda c: c["datasets"]["faces"].update(of="faces-ref"), r"datasets\.faces\.of 'faces-ref' is itself a part"),
    (lambda c: c["datasets"]["faces"].update(part="ref"), r"datasets\.faces\.part: 'ref' is not one of"),
    (lambda c: c["datasets"]["faces"].update(fraction=1.0), r"datasets\.faces\.fraction: 1\.0 is greater than"),
    (lambda c: c["datasets"]["faces"].update(fraction=0), r"datasets\.faces\.fraction: 0 is less than"),
    (lambda c: c["datasets"]["faces"].pop("of"), r"datasets\.faces: 'of' is a required property"),
    (lambda c: c["datasets"]["faces"].update(root="x"), r"datasets\.faces: .* set \['root'\] on the parent entry"),
    (lambda c: c["datasets"]["all"].update(fraction=0.3), r"datasets\.all: the key\(s\) \['fraction'\] apply only to"),
    # the reference part and the audited data must not overlap
    (lambda c: c["mitigation"]["methods"]["bend"].update(reference="faces"), r"are the same part \(evaluation\)"),
    (lambda c: c["mitigation"].update(dataset="all"), "is a part of the audited dataset 'all'"),
    (lambda c: c["mitigation"]["methods"]["bend"].update(reference="all"), "holds every image of the audited part"),
    (lambda c: c["datasets"]["faces"].update(seed=4), r"drawn differently \(seed 3 vs 4\)"),
    (lambda c: c["datasets"]["faces"].update(fraction=0.4), r"drawn differently \(fraction 0\.5 vs 0\.4\)"),
    (lambda c: c["datasets"]["faces"].pop("stratify"), r"drawn differently \(stratify \['gender', 'race'\] vs None\)"),
])
def test_part_config_errors(edit, message, tmp_path):
    cfg = copy.deepcopy(_config(tmp_path))
    edit(cfg)
    with pytest.raises(VlmbiasError, match=message):
        vconfig.validate(cfg)


def test_a_reference_that_is_the_audited_dataset_is_told_about_parts(tmp_path):
    cfg = _config(tmp_path)
    cfg["mitigation"].update(dataset="all")
    cfg["mitigation"]["methods"]["bend"]["reference"] = "all"
    with pytest.raises(VlmbiasError) as e:
        vconfig.validate(cfg)
    lines = str(e.value).splitlines()
    assert "is the audited dataset (mitigation.dataset)" in lines[0] and len(lines) == 4
    assert lines[1:] == ["  datasets: {all-ref: {type: part, of: all, part: reference},",
                         "             all-eval: {type: part, of: all, part: evaluation}}",
                         "  mitigation: {dataset: all-eval}, and mitigation.methods.bend.reference: all-ref"]


def test_the_world_test_split_as_reference_is_told_about_parts():
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    cfg["mitigation"]["methods"]["bendvlm"]["reference"] = "world"  # the audited dataset of the default run
    with pytest.raises(VlmbiasError, match=r"(?s)is the audited dataset.*world-ref: \{type: part, of: world"):
        vconfig.validate(cfg)


def test_parts_drawn_alike_pass_and_a_schema_filled_part_entry_is_accepted(tmp_path):
    cfg = _config(tmp_path)
    vconfig.validate(cfg)
    from snakemake.utils import validate

    validate(cfg, str(vconfig.SCHEMA))  # what the workflow does: defaults filled into every dataset entry
    assert cfg["datasets"]["faces"]["max_missing_fraction"] == 0.0
    vconfig.validate(cfg)  # parsed again (a cluster job) without complaint


def test_parts_of_the_world_dataset_wait_for_the_world_data(tmp_path):
    """A dry run of the default run with BendVLM fitting on half of the world's test split and the
    audit on the other half: the world's data folder is an input of both parts' manifests and of the
    reference step, which also writes out the reference part's manifest."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["datasets"].update({"world-ref": {"type": "part", "of": "world", "part": "reference"},
                            "world-eval": {"type": "part", "of": "world", "part": "evaluation"}})
    cfg["audit"]["datasets"] = ["world-eval"]
    cfg["mitigation"]["dataset"] = "world-eval"
    cfg["mitigation"]["methods"]["bendvlm"]["reference"] = "world-ref"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "2", "-n"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    jobs = run.stdout.split("\n\n")
    data = "results/world/world/data"
    for part in ("world-ref", "world-eval"):
        job = next(j for j in jobs if f"output: results/world/data/{part}/manifest.parquet" in j)
        assert f"input: {data}" in job, job
    ref = next(j for j in jobs if "rule bendvlm_reference:" in j)
    assert data in ref and "results/world/data/world-ref/manifest.parquet" in ref, ref


# ------------------------------------------------------------------ parts redrawn per fold (mitigation.split.images)

def _fold_config(root, folds=3, **split):
    cfg = _config(root)
    cfg["mitigation"]["split"] = {"held_out_fraction": 0.4, "seed": 0, "folds": folds, **split}
    return cfg


def test_each_fold_redraws_both_parts_disjoint_and_covering_and_fold_zero_is_the_single_split(fairface_dir):
    single, cfg = _config(fairface_dir), _fold_config(fairface_dir)
    vconfig.validate(single)
    vconfig.validate(cfg)
    assert [vconfig.mitigation_dataset(cfg, f) for f in range(3)] == ["faces", "faces~fold1", "faces~fold2"]
    assert [vconfig.fold_dataset(cfg, "faces-ref", f) for f in range(3)] == ["faces-ref", "faces-ref~fold1",
                                                                            "faces-ref~fold2"]
    assert vconfig.fold_dataset(cfg, "all", 2) == "all"  # not a part: the same images in every fold
    assert vconfig.mitigation_dataset(single, 0) == "faces" and not vconfig.image_folds(single)
    whole = build_manifest(vconfig.dataset_spec(cfg, "all"))[0]["image_id"].tolist()
    evaluated = []
    for f in range(3):
        ref_spec = vconfig.dataset_spec(cfg, vconfig.fold_dataset(cfg, "faces-ref", f))
        ev_spec = vconfig.dataset_spec(cfg, vconfig.mitigation_dataset(cfg, f))
        assert ref_spec == {**vconfig.dataset_spec(cfg, "faces-ref"), "seed": 3 + f}  # the part's seed plus the fold
        ref, ev = build_manifest(ref_spec)[0], build_manifest(ev_spec)[0]
        assert set(ref["image_id"]).isdisjoint(ev["image_id"]) and len(ref) == len(ev) == 21
        assert sorted([*ref["image_id"], *ev["image_id"]]) == whole
        assert ev.groupby(["gender", "race"]).size().isin([1, 2]).all()  # each fold's draw is stratified
        evaluated.append(frozenset(ev["image_id"]))
    assert evaluated[0] == frozenset(build_manifest(vconfig.dataset_spec(single, "faces"))[0]["image_id"])
    assert len(set(evaluated)) == 3  # every fold audits other images
    assert vconfig.uses_world_data(cfg, "faces~fold1") is False and vconfig.dataset_type(cfg, "faces~fold1") == "fairface"


def test_images_false_keeps_one_image_split_for_every_fold(tmp_path):
    cfg = _fold_config(tmp_path, images=False)
    vconfig.validate(cfg)
    assert vconfig.n_folds(cfg) == 3 and not vconfig.image_folds(cfg)
    assert {vconfig.mitigation_dataset(cfg, f) for f in range(3)} == {"faces"}
    assert {vconfig.fold_dataset(cfg, "faces-ref", f) for f in range(3)} == {"faces-ref"}
    assert vconfig.held_out_concepts(cfg, 0) != vconfig.held_out_concepts(cfg, 1) or \
        vconfig.held_out_concepts(cfg, 1) != vconfig.held_out_concepts(cfg, 2)  # the concepts still vary


def test_a_reference_part_of_another_dataset_is_redrawn_while_the_audited_dataset_stays(tmp_path):
    cfg = _fold_config(tmp_path, folds=2)
    cfg["datasets"]["other"] = {"type": "fairface", "root": str(tmp_path / "other")}
    cfg["mitigation"]["dataset"] = "other"
    vconfig.validate(cfg)
    assert vconfig.mitigation_parts(cfg) == ["faces-ref"]
    assert vconfig.mitigation_dataset(cfg, 1) == "other" and vconfig.fold_dataset(cfg, "faces-ref", 1) == "faces-ref~fold1"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["mitigation"]["split"].update(images="yes"), r"at mitigation\.split"),
    # nothing to redraw: the audited dataset and the reference are whole datasets
    (lambda c: (c["datasets"].update(other={"type": "fairface", "root": "x"}),
                c["mitigation"].update(dataset="other"), c["mitigation"]["methods"]["bend"].update(reference="all")),
     r"mitigation\.split\.images: true redraws .* neither mitigation\.dataset nor any BendVLM reference is a "
     r"dataset of type part"),
])
def test_image_fold_config_errors(edit, message, tmp_path):
    cfg = _fold_config(tmp_path, images=True)
    edit(cfg)
    with pytest.raises(VlmbiasError, match=message):
        vconfig.validate(cfg)


def test_a_fold_name_resolves_only_for_a_part_and_an_existing_fold(tmp_path):
    cfg = _fold_config(tmp_path)
    vconfig.validate(cfg)
    for name in ("all~fold1", "faces~fold3"):
        with pytest.raises(VlmbiasError, match=f"dataset '{name}': only a dataset of type part has folds"):
            vconfig.dataset_spec(cfg, name)
    with pytest.raises(VlmbiasError, match=r"expected <dataset>~fold<number>"):
        vconfig.dataset_fold("faces~foldx")


def test_an_experiment_may_not_audit_a_later_folds_model_on_its_reference_images(tmp_path):
    cfg = _fold_config(tmp_path, folds=2)
    cfg["experiments"] = {"architecture": {"dataset": "faces", "models": ["clip", "clip~bend"], "query_sets": ["jobs"]}}
    vconfig.validate(cfg)  # fold 0's model on fold 0's evaluation part, as with a single split
    cfg["experiments"]["architecture"]["models"] = ["clip", "clip~bend~fold1"]
    with pytest.raises(VlmbiasError, match=r"experiments\.architecture: model 'clip~bend~fold1' fitted on fold 1's "
                                           r"reference part \(faces-ref~fold1\), which shares images with dataset "
                                           r"'faces'; audit fold 0's model \(clip~bend\) there instead"):
        vconfig.validate(cfg)
