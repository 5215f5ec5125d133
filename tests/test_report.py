"""Run information for the report: the configuration as used and the software versions."""
import json

import pandas as pd
import torch
import yaml

from vlmbias.report import main, software_versions


def test_versions_name_the_packages_that_change_numbers():
    v = software_versions().set_index("package")["version"]
    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert {"python", "transformers", "open_clip_torch", "snakemake", "cuda", "gpu"} <= set(v.index)


def test_run_info_writes_config_and_versions(tmp_path):
    config = {"run_name": "r", "query_sets": {"q": {"queries": ["一位医生"]}}}
    main(["run-info", "--config-json", json.dumps(config), "--out-config", str(tmp_path / "c.yaml"),
          "--out-versions", str(tmp_path / "v.csv")])
    assert yaml.safe_load((tmp_path / "c.yaml").read_text(encoding="utf-8")) == config
    assert "torch" in set(pd.read_csv(tmp_path / "v.csv")["package"])
