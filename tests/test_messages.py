"""Smaller user-facing messages: --csv paths, the file column, the missing/unreadable fractions, and
`vlmbias calibrate` telling a missed planted bias from a metric's known limit."""
import re

import pandas as pd
import pytest

from vlmbias import VlmbiasError
from vlmbias.audit.data import build_manifest
from vlmbias.audit.shards import check_bad_fraction
from vlmbias.cli import main


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_csv_names_both_places_without_doubling(fairface_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rel = f"{fairface_dir.name}/labels.csv"  # as typed from the folder above the dataset
    assert main(["audit", "--model", "ViT-B-32:openai", "--dataset", str(fairface_dir), "--csv", rel,
                 "--query", "a doctor"]) == 2
    line = _err(capsys)
    assert line == (f"error: --csv {rel} not found (looked in the working directory {tmp_path} and in the dataset "
                    f"folder {fairface_dir.resolve()})")
    assert f"{fairface_dir.name}/{fairface_dir.name}" not in line
    with pytest.raises(VlmbiasError, match=r"^label file not found: nolabels.csv \(looked for it inside the dataset "
                                           rf"folder {re.escape(str(fairface_dir.resolve()))}\)$"):
        build_manifest({"type": "labelled-folder", "root": str(fairface_dir), "csv": "nolabels.csv"})


def test_path_column_points_to_file_column(fairface_dir, tmp_path, capsys):
    labels = pd.read_csv(fairface_dir / "fairface_label_val.csv").rename(columns={"file": "path"})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    argv = ["audit", "--model", "ViT-B-32:openai", "--dataset", str(fairface_dir), "--csv", str(tmp_path / "labels.csv"),
            "--query", "a doctor"]
    assert main(argv) == 2
    line = _err(capsys)
    assert "has no file column 'file'" in line
    assert line.endswith("if 'path' holds the image files, pass --file-column path (config: file_column: path)")


def test_missing_fraction_names_the_option_and_the_fraction_that_allows_it(fairface_dir, tmp_path):
    import shutil

    root = tmp_path / "ff"
    shutil.copytree(fairface_dir, root)
    (root / "val" / "1.jpg").unlink()
    with pytest.raises(VlmbiasError) as e:
        build_manifest({"type": "fairface", "root": str(root)})
    msg = str(e.value)
    assert msg.startswith("1 of 42 listed images are missing (allowed fraction 0.0)")
    assert "allow a fraction of at least 0.0239: --max-missing-fraction 0.0239 on the command line" in msg
    manifest, _, missing = build_manifest({"type": "fairface", "root": str(root)}, 0.0239)  # the advice works
    assert len(manifest) == 41 and len(missing) == 1


def test_bad_fraction_says_how_to_allow_one_corrupt_image():
    skipped = pd.DataFrame({"path": ["/data/img7.jpg"], "reason": ["cannot identify image file"]})
    with pytest.raises(VlmbiasError) as e:
        check_bad_fraction(skipped, 80, 0.01)
    msg = str(e.value)
    assert msg.startswith("1 of 80 images could not be read (allowed fraction 0.01); first: /data/img7.jpg: "
                          "cannot identify image file")
    assert "allow a fraction of at least 0.0125: --max-bad-fraction 0.0125 on the command line, " \
           "embed.max_bad_fraction in a workflow config" in msg
    check_bad_fraction(skipped, 80, 0.0125)  # the advice works


# ---------------------------------------------------------------- calibrate: missed bias vs known limit

def _checks(tmp_path, rows, kind=True):
    path = tmp_path / "calibration" / "m" / "checks.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=["check", "value", "rule", "threshold", "passed", "kind"])
    (df if kind else df.drop(columns="kind")).assign(detail="").to_csv(path, index=False)


RECOVERY = ("strong_gender_plants_found_all", 6, ">=", 6, True, "recovery")
SIMILARITY = ("dose_response_spearman_similarity", 0.98, ">=", 0.9, True, "recovery")
SATURATING = ("dose_response_spearman_topk_share", 0.71, ">=", 0.9, False, "limit")


@pytest.mark.parametrize("kind", [True, False])  # files written before the `kind` column: by name
def test_calibrate_known_limit_is_not_a_pass_nor_a_failure(kind, tmp_path, capsys):
    _checks(tmp_path, [RECOVERY, SIMILARITY, SATURATING], kind)
    assert main(["calibrate", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"EXPECTED-LIMIT\s+dose_response_spearman_topk_share\s+value 0.71", out)
    assert not re.search(r"PASS\s+dose_response_spearman_topk_share", out)
    assert "not a failure of the audit: the top-k share saturates by design" in out
    assert ("2 of 3 checks passed; 1 at a known metric limit (EXPECTED-LIMIT: dose_response_spearman_topk_share); "
            "the audit found every planted bias it was checked on") in out


def test_calibrate_missed_planted_bias_still_fails(tmp_path, capsys):
    _checks(tmp_path, [(*RECOVERY[:4], False, "recovery"), SIMILARITY, SATURATING])
    assert main(["calibrate", "--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAIL\s+strong_gender_plants_found_all", out)
    assert "FAILED: strong_gender_plants_found_all" in out and "EXPECTED-LIMIT" in out


def test_calibrate_limit_check_that_passes_is_a_pass(tmp_path, capsys):
    _checks(tmp_path, [RECOVERY, (*SATURATING[:4], True, "limit")])
    assert main(["calibrate", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"PASS\s+dose_response_spearman_topk_share", out) and "EXPECTED-LIMIT" not in out
    assert "2 of 2 checks passed; all passed" in out
