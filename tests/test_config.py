"""Config validation: the shipped configs pass; a wrong name anywhere is named in the error."""
from pathlib import Path

import pytest
import yaml

from vlmbias import VlmbiasError
from vlmbias.config import load_config, validate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["config.yaml", "config/thesis.yaml"])
def test_shipped_configs_validate(path):
    config = load_config(REPO / path)
    assert config["experiments"]["architecture"]["models"]


def _default():
    return yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["experiments"]["architecture"].update(models=["world-clip", "world-clipp"]),
     r"experiments.architecture: models \['world-clipp'\] not configured"),
    (lambda c: c["experiments"]["training_data"].update(query_sets=["world_gendr"]),
     r"experiments.training_data: query_sets \['world_gendr'\]"),
    (lambda c: c["experiments"]["architecture"].update(models=["world-clip"]), "at experiments.architecture.models"),
    (lambda c: c["experiments"].update(archtecture={}), "archtecture"),
    (lambda c: (c.pop("mitigation"), c["experiments"].pop("architecture")),
     "experiments.training_data .* needs mitigation.acquire"),
    (lambda c: c["query_sets"]["world_table"].update(templates={"en": []}), "world_table.templates"),
    (lambda c: c["images"].update(max_pixels=10 ** 9), r"at images.max_pixels: 1000000000 is greater than"),
    (lambda c: c["images"].update(max_pixel=5), r"'max_pixel' was unexpected"),
    (lambda c: c["metrics"].update(interval="jeffreys"), r"at metrics.interval: 'jeffreys' is not one of"),
])
def test_wrong_names_are_named(edit, message):
    config = _default()
    edit(config)
    with pytest.raises(VlmbiasError, match=message):
        validate(config)


def test_presets_join_the_query_sets():
    from vlmbias.audit import presets

    config = yaml.safe_load((REPO / "config" / "thesis.yaml").read_text())
    config["presets"] = ["berg2022", "bendvlm"]
    validate(config)
    assert {"berg2022_train", "berg2022_test", "bendvlm_stereotype"} <= set(config["query_sets"])
    assert "table" in config["query_sets"]  # the config's own sets stay
    assert set(presets.available()) >= {"thesis", "berg2022", "bendvlm"}
    clash = yaml.safe_load((REPO / "config" / "thesis.yaml").read_text())
    clash["presets"] = ["thesis"]
    with pytest.raises(VlmbiasError, match="preset 'thesis' defines query set 'table', which the config also"):
        validate(clash)
    with pytest.raises(VlmbiasError, match="unknown preset 'nope'"):
        validate({**yaml.safe_load((REPO / "config.yaml").read_text()), "presets": ["nope"]})


def test_thesis_preset_equals_the_thesis_config():
    from vlmbias.audit import presets

    config = yaml.safe_load((REPO / "config" / "thesis.yaml").read_text())
    assert presets.query_sets("thesis") == config["query_sets"]


def test_world_entries_name_the_world_file_they_read():
    from vlmbias.config import dataset_spec

    config = load_config(REPO / "config.yaml")
    root = "results/world/world/data"
    assert dataset_spec(config, "world")["root"] == f"{root}/fairface"
    assert {k: dataset_spec(config, n)[k] for n, k in [("world-heldout", "csv")]} == {"csv": "heldout_captions.csv"}
    assert (dataset_spec(config, "world-reference")["root"], dataset_spec(config, "world-reference")["csv"]) == \
        (root, "reference.csv")
    assert dataset_spec(config, "world-captions")["csv"] == "train_captions.csv"
    assert config["mitigation"]["methods"]["bendvlm"]["reference"] == "world-reference"
    assert config["mitigation"]["methods"]["saner"]["captions"] == "world-captions"
    bad = _default()
    bad["datasets"]["world-reference"]["world"] = "references"
    with pytest.raises(VlmbiasError, match=r"datasets.world-reference.world: 'references' is not one of"):
        validate(bad)
    bad = _default()
    bad["datasets"]["world-captions"]["world"] = "reference"
    with pytest.raises(VlmbiasError, match="world: reference is a dataset of type labelled-folder, not captions"):
        validate(bad)
