"""The documentation: the mkdocs site builds strictly (a broken link or a missing page fails), and
the README's relative links point to files that exist."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pages written beside this one; the README may link them before they exist
AWAITED = {"docs/intervals.md", "docs/troubleshooting.md"}


def test_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[test]' installs it)")
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert {"index", "python-api", "configuration", "metrics"} <= pages
    for page in pages - {"index"}:
        assert (site / page / "index.html").is_file(), f"{page}.md is not in the site"


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The check above can fail: a page linking to a missing page stops the strict build."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nSee [the missing page](missing.md).\n")
    (tmp_path / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "s")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode != 0 and "missing.md" in run.stderr


def test_readme_links_exist_and_it_stays_short():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [x for x in links if not re.match(r"[a-z]+:", x)]
    assert local, "the README links to no documentation page"
    missing = [x for x in local if not (ROOT / x).exists() and x not in AWAITED]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_config_block_is_a_valid_short_config(tmp_path):
    import yaml

    from vlmbias import config as vconfig

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, flags=re.S).group(1)
    config = yaml.safe_load(block)
    assert len(block.strip().splitlines()) <= 20
    photos, model = config["datasets"]["photos"], config["models"]["my-clip"]
    assert photos["root"] == "/data/photos" and model["name"] == "/models/my-clip"
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / photos["csv"]).write_text("file,gender\n")
    (tmp_path / "my-clip").mkdir()
    photos["root"], model["name"] = str(tmp_path / "photos"), str(tmp_path / "my-clip")  # paths that exist here
    vconfig.validate(config)  # the schema the workflow checks before any job runs
    vconfig.check_config(config)
    assert config["datasets"]["photos"]["type"] == "labelled-folder"
    # and the schema is not a rubber stamp: a misspelt key in the same block stops it
    config["datasets"]["photos"]["csvfile"] = config["datasets"]["photos"].pop("csv")
    with pytest.raises(Exception, match="csvfile"):
        vconfig.validate(config)
