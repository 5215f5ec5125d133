"""What produced a run, for the HTML report: the resolved configuration and the software versions.

`python -m vlmbias.report run-info --config-json '{...}' --out-config config.yaml --out-versions versions.csv`
writes the configuration exactly as the workflow saw it (schema defaults filled in) and one row per
package that can change the numbers (`package, version`), plus Python, the platform and whether
torch sees a GPU.
"""
from __future__ import annotations

import argparse
import platform
from importlib import metadata

import pandas as pd
import yaml

from vlmbias.io import atomic_path, parse_json_arg, run_cli, write_table

PACKAGES = ["vlmbias", "torch", "torchvision", "open_clip_torch", "transformers", "peft", "tokenizers",
            "safetensors", "faiss-cpu", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "pillow",
            "snakemake", "deepface", "onnxruntime", "simple-image-download"]


def software_versions() -> pd.DataFrame:
    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    try:
        import torch
    except ImportError:
        return pd.DataFrame(rows, columns=["package", "version"])
    rows.append(("cuda", torch.version.cuda or "none"))
    rows.append(("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"))
    return pd.DataFrame(rows, columns=["package", "version"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.report", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("run-info", help="write the run's configuration and software versions")
    info.add_argument("--config-json", required=True)
    info.add_argument("--out-config", required=True)
    info.add_argument("--out-versions", required=True)
    a = p.parse_args(argv)
    config = parse_json_arg(a.config_json, "--config-json")
    with atomic_path(a.out_config) as tmp:
        tmp.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    write_table(software_versions(), a.out_versions)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
