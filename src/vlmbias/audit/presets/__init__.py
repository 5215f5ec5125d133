"""The literature's query lists as shipped presets (one YAML file each, its header naming the
source and the numbers it is usually reported with; provenance in SOURCES.md):

- `thesis`: the thesis' query sets (its Table 4.1 at k = 20; figures at k = 200);
- `berg2022`: Berg et al. 2022's adjective prompts, train and held-out test sets (MaxSkew@1000
  and NDKL against a uniform target on FairFace val);
- `bendvlm`: BendVLM's stereotype queries (Gerych et al. 2024; FairFace, k = 500 in its code).
- `sem2026`: SEM's stereotype queries with their template (Guimard et al. 2026; FairFace train + val,
  MaxSkew@500 and KL@500 against the dataset's mix).

Each file also carries a `protocol` block (queries, k, target, metrics, scale, dataset): a config
runs the whole protocol with `protocol: NAME` (vlmbias.audit.protocols, docs/protocols.md).

A config selects them with `presets: [berg2022, ...]` (their query sets join `query_sets`, under
their own names); the command line with `vlmbias audit --query-set PRESET:SET`.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from vlmbias import VlmbiasError

PRESET_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the presets that hold query sets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if "query_sets" in _read(p))


def _read(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def query_sets(name: str) -> dict[str, dict]:
    """The query sets of preset `name`."""
    if name not in available():
        raise VlmbiasError(f"unknown preset {name!r}; available: {available()}")
    return _read(PRESET_DIR / f"{name}.yaml")["query_sets"]


def query_set(ref: str) -> tuple[str, dict]:
    """`PRESET:SET` -> (set name, its spec); the error lists what the preset has."""
    preset, _, name = ref.partition(":")
    sets = query_sets(preset)
    if name not in sets:
        raise VlmbiasError(f"preset {preset!r} has no query set {name!r}; it has {sorted(sets)}")
    return name, sets[name]


def apply_presets(config: dict) -> dict:
    """Add the query sets of every preset in `config["presets"]` to `config["query_sets"]`, in place.
    A name the config defines itself is an error, never a silent override."""
    names = config.get("presets") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise VlmbiasError(f"presets must be a list of preset names, got {names!r}; available: {available()}")
    own = config.setdefault("query_sets", {}) if names else config.get("query_sets", {})
    for name in names:
        for qset, spec in query_sets(name).items():
            if qset in own:
                raise VlmbiasError(f"preset {name!r} defines query set {qset!r}, which the config also defines; "
                                   "rename one of them")
            own[qset] = spec
    return config
