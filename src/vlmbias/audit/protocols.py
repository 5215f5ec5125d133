"""Whole-protocol presets: a preset's `protocol` block fixes everything a published number depends
on (queries and templates, k, target distribution, dataset, padding and split, metrics and their
scale), so that `protocol: sem2026` in a config runs the protocol as published (docs/protocols.md).

The fields a protocol fixes (`FIXED`) are checked against the config before any job runs. A config
that sets one of them differently is refused, unless it names the field in `protocol_deviations`:
then the run goes ahead and every comparison with published numbers is marked as deviating (and
not comparable).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from vlmbias import VlmbiasError
from vlmbias.audit.presets import PRESET_DIR

# config fields a protocol fixes, as a config names them in `protocol_deviations`
FIXED = ("retrieval.k", "query_sets", "dataset.type", "dataset.padding", "dataset.split", "zeroshot.prompts",
         "zeroshot.label_set")
DATASET_DEFAULT_SPLIT = {"fairface": "val", "fairface-hub": "validation", "celeba": "test"}


def _read(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def available() -> list[str]:
    """Names of the presets that carry a whole protocol."""
    # a top-level `protocol:` key, found without parsing every preset (the Berg lists are long)
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")
                  if re.search(r"^protocol:", p.read_text(encoding="utf-8"), flags=re.M))


def protocol(name: str) -> dict:
    """The protocol block of preset `name`, with its `name` and k as a list (`ks`)."""
    if name not in available():
        raise VlmbiasError(f"unknown protocol {name!r}; available: {available()}")
    block = dict(_read(PRESET_DIR / f"{name}.yaml")["protocol"])
    k = block.get("k")
    block["ks"] = [] if k is None else [int(x) for x in (k if isinstance(k, list) else [k])]
    return {"name": name, **block}


def apply_protocol(config: dict) -> None:
    """Name the protocol's preset in `config["presets"]` (in place), so its query sets join the
    config; before `apply_presets`."""
    name = config.get("protocol")
    if not name:
        if config.get("protocol_deviations"):
            raise VlmbiasError("protocol_deviations is set but no protocol is named; add `protocol: <name>` "
                               f"(available: {available()}) or remove protocol_deviations")
        return
    if not isinstance(name, str):
        raise VlmbiasError(f"protocol must be a preset name, got {name!r}; available: {available()}")
    p = protocol(name)
    if p.get("kind") == "retrieval":
        presets = config.setdefault("presets", [])
        if name not in presets:
            presets.append(name)


def _audited_datasets(config: dict, kind: str) -> list[str]:
    if kind == "zeroshot":
        names = (config.get("zeroshot") or {}).get("datasets")
        if names:
            return list(names)
    return list((config.get("audit") or {}).get("datasets") or config.get("datasets") or {})


def _differences(config: dict, p: dict) -> dict[str, str]:
    """{fixed field: what differs, in words} for every field where the config leaves the protocol."""
    out: dict[str, str] = {}
    if p.get("kind") == "retrieval":
        ks = (config.get("retrieval") or {}).get("k", [])
        ks = [int(x) for x in (ks if isinstance(ks, list) else [ks])]
        missing = [k for k in p["ks"] if k not in ks]
        if missing:
            out["retrieval.k"] = f"the protocol needs k {p['ks']}, retrieval.k is {ks}"
        chosen = (config.get("audit") or {}).get("query_sets") or list(config.get("query_sets") or {})
        lacking = [q for q in p.get("query_sets") or [] if q not in chosen]
        if lacking:
            out["query_sets"] = f"the protocol's query set(s) {lacking} are not audited"
    else:
        zs = config.get("zeroshot")
        if zs is None:
            out["zeroshot.prompts"] = "the protocol is zero-shot, the config has no zeroshot block"
        else:
            for key in ("prompts", "label_set"):
                want, got = p.get(key), zs.get(key, {"prompts": "zeroshot_fairface", "label_set": "table6"}[key])
                if want is not None and got != want:
                    out[f"zeroshot.{key}"] = f"the protocol uses {want!r}, the config {got!r}"
    want = p.get("dataset") or {}
    for name in _audited_datasets(config, p.get("kind")):
        spec = (config.get("datasets") or {}).get(name) or {}
        if spec.get("type") == "part":  # a part's images are its parent's
            spec = (config.get("datasets") or {}).get(spec.get("of")) or {}
        kind = spec.get("type")
        types = want.get("type")
        types = [types] if isinstance(types, str) else types
        if types and kind not in types:
            out.setdefault("dataset.type", f"dataset {name!r} is {kind!r}, the protocol needs {types}")
        if "padding" in want and str(spec.get("padding")) != str(want["padding"]):
            out.setdefault("dataset.padding",
                           f"dataset {name!r} has padding {spec.get('padding')!r}, the protocol needs {want['padding']!r}")
        if "split" in want:
            split = spec.get("split", DATASET_DEFAULT_SPLIT.get(kind))
            if str(split) != str(want["split"]):
                out.setdefault("dataset.split", f"dataset {name!r} has split {split!r}, the protocol needs "
                                                f"{want['split']!r}")
    return out


def deviations(config: dict) -> list[str]:
    """The fixed fields this run changes on purpose (listed in `protocol_deviations` and different);
    a field that differs without being listed is an error that says how to proceed."""
    name = config.get("protocol")
    if not name:
        return []
    declared = list(config.get("protocol_deviations") or [])
    unknown = [d for d in declared if d not in FIXED]
    if unknown:
        raise VlmbiasError(f"protocol_deviations names {unknown}, which no protocol fixes; fixed fields: {list(FIXED)}")
    diff = _differences(config, protocol(name))
    undeclared = [f for f in diff if f not in declared]
    if undeclared:
        f = undeclared[0]
        raise VlmbiasError(f"protocol {name!r} fixes {f}: {diff[f]}; set it as the protocol says, or add {f!r} to "
                           "protocol_deviations to run anyway (the comparison with published numbers is then marked "
                           "as deviating)")
    return [f for f in FIXED if f in diff]
