"""Config checks beyond the JSON schema, and resolution of world-generated paths.

The schema (workflow/schemas/config.schema.yaml) catches typos and wrong types; this module
checks what a schema cannot: that the `audit` block names existing datasets, models and query
sets, and it turns `world: ...` references into the paths the world rules write.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from vlmbias import VlmbiasError

WORLD_MODELS = ("clip",)  # the world trains one tiny CLIP (a transformers CLIPModel directory)
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def results_root(config: dict) -> str:
    return f"{config.get('results_dir', 'results')}/{config.get('run_name', 'default')}"


# `world: <name>` on a dataset entry: which of the calibration world's files it reads (type, file at the world's root)
WORLD_FILES: dict[str, tuple[str, str | None]] = {
    "test": ("fairface", None),                          # fairface/: the balanced test split
    "reference": ("labelled-folder", "reference.csv"),   # train-split concept images with their labels
    "train-captions": ("captions", "train_captions.csv"),  # train-split captions that name a gender
    "heldout-captions": ("captions", "heldout_captions.csv"),  # held-out concepts' evidence captions
}


def world_data_dir(config: dict) -> str:
    return f"{results_root(config)}/world/data"


def world_train_threads(config: dict) -> int:
    """Threads of the world CLIP's training job: `world.model.threads`, else the top-level `threads`."""
    return int(((config.get("world") or {}).get("model") or {}).get("threads") or config.get("threads") or 1)


def world_model_dir(config: dict, name: str) -> str:
    return f"{results_root(config)}/world/models/{name}"


def audit_selection(config: dict) -> dict[str, list[str]]:
    """The datasets, models and query sets to cross; unknown names are errors that list the known ones."""
    chosen = {}
    for block in ("datasets", "models", "query_sets"):
        known = list(config.get(block) or {})
        names = (config.get("audit") or {}).get(block) or known
        unknown = [n for n in names if n not in known]
        if unknown:
            raise VlmbiasError(f"audit.{block} names {unknown}, which config.{block} does not define (known: {known})")
        chosen[block] = list(names)
    return chosen


def _schema_default(*keys: str):
    node = yaml.safe_load(SCHEMA.read_text())
    for key in keys:
        node = node["properties"][key]
    return node["default"]


def shard_size(config: dict) -> int | None:
    """embed.shard_size, None when embedding runs as one job per (dataset, model)."""
    return (config.get("embed") or {}).get("shard_size") or None


def check_retrieval(config: dict) -> None:
    from vlmbias.audit.approximate import check_spec

    retrieval = config.get("retrieval") or {}
    if retrieval.get("method") == "approximate":
        check_spec(retrieval.get("approximate"))
    elif retrieval.get("approximate") is not None:
        raise VlmbiasError(f"retrieval.approximate is set but retrieval.method is "
                           f"{retrieval.get('method', 'auto')!r}; set method: approximate or remove the block")


def check_config(config: dict) -> None:
    audit_selection(config)
    from vlmbias.audit.protocols import deviations

    deviations(config)  # a protocol-fixed field changed without saying so stops the run here
    from vlmbias.audit.metrics import INTERVAL_METHODS

    interval = (config.get("metrics") or {}).get("interval")
    if interval is not None and interval not in INTERVAL_METHODS:  # the schema's enum, kept in step with the code
        raise VlmbiasError(f"metrics.interval {interval!r} is not one of {list(INTERVAL_METHODS)}")
    size = shard_size(config)
    if size:
        batch = (config.get("embed") or {}).get("batch_size") or _schema_default("embed", "batch_size")
        if size % batch:
            raise VlmbiasError(f"embed.shard_size ({size}) must be a multiple of embed.batch_size ({batch}), so that "
                               "a sharded run encodes the same batches as an unsharded one (bitwise equal embeddings)")
    check_retrieval(config)
    for name, spec in config.get("datasets", {}).items():
        if spec["type"] == "part":
            check_part(config, name)
            continue
        stray = [k for k in PART_ONLY_KEYS if k in spec]
        if stray:
            raise VlmbiasError(f"datasets.{name}: the key(s) {stray} apply only to a dataset of type part; to split "
                               f"{name!r}, add entries {{type: part, of: {name}, part: reference}} and "
                               f"{{type: part, of: {name}, part: evaluation}}")
        if spec.get("world") and "world" not in config:
            raise VlmbiasError(f"dataset {name!r} uses the calibration world, but the config has no 'world' block")
        world = spec.get("world", False)
        if world not in (True, False) and world not in WORLD_FILES:
            raise VlmbiasError(f"datasets.{name}.world: unknown value {world!r}; expected true, false or one of "
                               f"{list(WORLD_FILES)}")
        if isinstance(world, str) and spec["type"] != WORLD_FILES[world][0]:
            raise VlmbiasError(f"datasets.{name}: world: {world} is a dataset of type {WORLD_FILES[world][0]}, "
                               f"not {spec['type']}")
        on_disk = ("fairface", "labelled-folder", "captions", "utkface", "celeba", "facet", "socialcounterfactuals")
        if not spec.get("world") and spec["type"] in on_disk and not spec.get("root"):
            raise VlmbiasError(f"dataset {name!r} (type {spec['type']}) needs a 'root' folder")
        if spec["type"] == "labelled-folder" and not spec.get("csv") and not spec.get("world"):
            raise VlmbiasError(f"dataset {name!r} (labelled-folder) needs a 'csv' label file")
        if spec["type"] == "captions" and spec.get("layout", "csv") == "csv" and not spec.get("csv") \
                and not spec.get("world"):
            raise VlmbiasError(f"dataset {name!r} (captions, layout csv) needs a 'csv' file of image paths and captions")
    cal = config.get("calibration")
    if cal:
        ds = config.get("datasets", {}).get(cal["dataset"])
        if not ds or ds.get("world") not in (True, "test"):
            raise VlmbiasError(f"calibration.dataset {cal['dataset']!r} must name a dataset with 'world: true'")
        unknown = [q for q in cal["query_sets"] if q not in config.get("query_sets", {})]
        if unknown:
            raise VlmbiasError(f"calibration.query_sets names unknown query set(s) {unknown}")
    mit = config.get("mitigation")
    if mit:
        if mit["base_model"] not in config.get("models", {}):
            raise VlmbiasError(f"mitigation.base_model {mit['base_model']!r} is not a configured model")
        if mit["dataset"] not in config.get("datasets", {}):
            raise VlmbiasError(f"mitigation.dataset {mit['dataset']!r} is not a configured dataset")
        unknown = [q for q in mit["query_sets"] if q not in config.get("query_sets", {})]
        if unknown:
            raise VlmbiasError(f"mitigation.query_sets names unknown query set(s) {unknown}")
        concept_split(config)  # a split that cannot be drawn is a config error, before any job runs
        lora = [m for m, v in mit["methods"].items() if v["kind"] in ("lora", "prompt-array")]
        if lora and config["models"][mit["base_model"]].get("backend", "hf") != "hf":
            raise VlmbiasError(f"LoRA / prompt-array methods {lora} need an 'hf' base model; {mit['base_model']!r} is not")
        if lora and not (mit.get("acquire") and mit.get("label")):
            raise VlmbiasError(f"LoRA / prompt-array methods {lora} need mitigation.acquire and mitigation.label blocks")
        for key in ("acquire", "label"):
            if (mit.get(key) or {}).get("world") and "world" not in config:
                raise VlmbiasError(f"mitigation.{key} reads the calibration world's search stand-in (world: true), "
                                   "but the config has no 'world' block")
        check_data_roles(config)
        check_image_folds(config)
    for exp, spec in (config.get("experiments") or {}).items():
        models = spec.get("models") or [spec.get("model")]
        known = [*config.get("models", {}), *variant_names(config)]
        checks = [("dataset", [spec["dataset"]], list(config.get("datasets", {}))), ("models", models, known),
                  ("query_sets", spec["query_sets"], list(config.get("query_sets", {})))]
        for key, names, have in checks:
            unknown = [n for n in names if n not in have]
            if unknown:
                hint = ("; a '<base>~<method>' model is a method of the mitigation block (mitigation.methods)"
                        if any("~" in str(n) for n in unknown) else "")
                raise VlmbiasError(f"experiments.{exp}: {key} {unknown} not configured (known: {have}){hint}")
        for m in models:
            check_fold_leak(config, f"experiments.{exp}", m, spec["dataset"])
        if exp == "training_data" and not (mit and mit.get("acquire") and mit.get("label")):
            raise VlmbiasError("experiments.training_data compares web-search images with retrievals; it needs "
                               "mitigation.acquire and mitigation.label blocks")
    world_models = list(WORLD_MODELS)
    for name, spec in config.get("models", {}).items():
        if spec.get("world"):
            if "world" not in config:
                raise VlmbiasError(f"model {name!r} uses the calibration world, but the config has no 'world' block")
            if spec["world"] not in world_models:
                raise VlmbiasError(f"model {name!r}: world model {spec['world']!r} is not defined (known: {world_models})")
        elif not spec.get("name"):
            raise VlmbiasError(f"model {name!r} needs a 'name' (a model name, hub id or local path)")
        if spec.get("tags"):
            from vlmbias.encoders.models import local_tags

            local_tags(spec, f"models.{name}")
    leaderboard_k(config)


def used_names(config: dict) -> tuple[list[str], list[str]]:
    """The datasets and (base) models a run touches: the audit's, calibration's, mitigation's and experiments'."""
    chosen = audit_selection(config)
    datasets, models = list(chosen["datasets"]), list(chosen["models"])
    if config.get("calibration"):
        datasets.append(config["calibration"]["dataset"])
    if config.get("mitigation"):
        datasets.append(config["mitigation"]["dataset"])
        models.append(config["mitigation"]["base_model"])
    for spec in (config.get("experiments") or {}).values():
        datasets.append(spec["dataset"])
        models += [split_variant(m)[0] for m in (spec.get("models") or [spec.get("model")]) if m]
    return list(dict.fromkeys(datasets)), [m for m in dict.fromkeys(models) if m in config.get("models", {})]


def check_paths(config: dict) -> None:
    """What a dry run can check on disk before any job starts (the workflow calls this; `validate`
    does not, so a config can be read on a machine without the data): every used dataset's root folder
    and label CSV and every used local model path exist. Paths are relative to the working directory."""
    datasets, models = used_names(config)
    for name in dict.fromkeys(parent_name(config, d) for d in datasets):  # a part's data is its parent's
        spec = config["datasets"][name]
        if spec.get("world") or spec["type"] not in ("fairface", "labelled-folder"):
            continue  # generated by the workflow, or fetched from the hub
        root = Path(spec["root"]).expanduser()
        if not root.is_dir():
            hint = (" (download FairFace and unzip it there, or audit the hub copy: a dataset of type fairface-hub)"
                    if spec["type"] == "fairface" else "")
            raise VlmbiasError(f"datasets.{name}.root: folder {spec['root']} not found (looked in {root.resolve()})"
                               + hint)
        csvs = ([Path(spec["csv"]).expanduser()] if spec["type"] == "labelled-folder"
                else [Path(f"fairface_label_{s}.csv") for s in str(spec.get("split", "val")).split("+")])
        for csv in csvs:
            where = csv if csv.is_absolute() else root / csv
            if not where.is_file():
                key = "csv" if spec["type"] == "labelled-folder" else "root"
                raise VlmbiasError(f"datasets.{name}.{key}: label file {where} not found"
                                   + ("" if spec["type"] == "labelled-folder" else
                                      " (a FairFace folder holds val/ and fairface_label_val.csv)"))
    for name in models:
        spec = config["models"][name]
        if spec.get("world"):
            continue
        if spec.get("backend", "hf") == "hf":
            from vlmbias.encoders.models import local_model_folder

            local_model_folder(str(spec["name"]), f"models.{name}.name")
            continue
        if spec.get("config") and not Path(spec["config"]).expanduser().exists():
            raise VlmbiasError(f"models.{name}.config: {spec['config']} not found")
        pretrained = str(spec.get("pretrained") or "")
        if (("/" in pretrained or Path(pretrained).suffix in (".safetensors", ".pt", ".pth", ".bin"))
                and not Path(pretrained).expanduser().exists()):
            raise VlmbiasError(f"models.{name}.pretrained: checkpoint {pretrained} not found "
                               f"(looked in {Path(pretrained).expanduser().resolve()})")


def leaderboard_k(config: dict) -> int:
    """The k of the model leaderboard: `leaderboard.k`, one of retrieval.k (default: the largest)."""
    ks = (config.get("retrieval") or {}).get("k") or [20, 200]
    k = (config.get("leaderboard") or {}).get("k")
    if k is None:
        return max(ks)
    if k not in ks:
        raise VlmbiasError(f"leaderboard.k {k} is not among retrieval.k {ks}: the leaderboard averages the "
                           "metric summaries, which exist only at those k")
    return k


def leaderboard_models(config: dict) -> list[str]:
    """The audited models the model leaderboard ranges over; it is built only for two or more."""
    models = audit_selection(config)["models"]
    return models if len(models) > 1 else []


def calibration_models(config: dict) -> list[str]:
    """Audited models trained in the world: the ones whose planted bias is known."""
    if not config.get("calibration"):
        return []
    return [m for m in audit_selection(config)["models"] if config["models"][m].get("world")]


# ---------------------------------------------------------------- mitigation variants
# A mitigated model is named "<base>~<method>": the base model with a LoRA adapter, or with a
# query transform (prompt suffix, projection). It is audited by the same rules as any model.
# With repeated splits (mitigation.split.folds > 1) a fitted method is fitted once per fold, its
# files under mitigation/folds/<f>/; fold f > 0's model is "<base>~<method>~fold<f>".

FOLD_TAG = "~fold"


def mitigation_dir(config: dict) -> str:
    return f"{results_root(config)}/mitigation"


def n_folds(config: dict) -> int:
    """mitigation.split.folds (1 without a mitigation block)."""
    if not config.get("mitigation"):
        return 1
    from vlmbias.mitigate.split import n_folds as folds

    return folds(split_spec(config))


def fold_dir(config: dict, fold: int | str = 0) -> str:
    """Where fold `fold`'s split, fitted methods and comparison go: the mitigation folder itself with
    one fold (the single split), mitigation/folds/<fold>/ with several."""
    return mitigation_dir(config) if n_folds(config) == 1 else f"{mitigation_dir(config)}/folds/{fold}"


def fitted(config: dict, method: str) -> bool:
    """Whether a method learns or calibrates on the fitting concepts (every kind but a prompt suffix),
    so that each fold fits its own."""
    return method_spec(config, method)["kind"] != "prompt"


def adapter_dir(config: dict, method: str, fold: int = 0) -> str:
    return f"{fold_dir(config, fold)}/adapters/{method}"


def reference_dir(config: dict, method: str, fold: int = 0) -> str:
    """BendVLM's reference image embeddings (fitting concepts only) for a `bendvlm` method."""
    return f"{fold_dir(config, fold)}/reference/{method}"


def saner_dir(config: dict, method: str, fold: int = 0) -> str:
    """A `saner` method's trained text-side layer (fitting concepts only)."""
    return f"{fold_dir(config, fold)}/saner/{method}"


def prompts_dir(config: dict, method: str, fold: int = 0) -> str:
    """A `prompt-array` method's learned prompt vectors (trained on the fitting concepts' images)."""
    return f"{fold_dir(config, fold)}/prompts/{method}"


def method_inputs(config: dict, method: str, fold: int = 0) -> list[str]:
    """What a method's audit needs besides the base model: its adapter, reference set, layer or prompts."""
    kind = method_spec(config, method)["kind"]
    return {"lora": [adapter_dir(config, method, fold)], "bendvlm": [reference_dir(config, method, fold)],
            "saner": [saner_dir(config, method, fold)],
            "prompt-array": [prompts_dir(config, method, fold)]}.get(kind, [])


def reference_dataset(config: dict, method: str) -> str | None:
    """The labelled dataset a `bendvlm` method takes its reference images from (None: not set)."""
    return method_spec(config, method).get("reference")


def caption_dataset(config: dict, method: str | None = None) -> str | None:
    """The caption set a `saner` method trains on (its `captions`, else `mitigation.captions`), or,
    with no method, the one quality measures caption retrieval on. None: not set."""
    mit = config.get("mitigation") or {}
    own = method_spec(config, method).get("captions") if method else None
    return own or mit.get("captions")


def quality_caption_dataset(config: dict) -> str | None:
    """The caption set quality measures caption retrieval on: `mitigation.quality_captions`, else
    `mitigation.captions` (None: no caption retrieval)."""
    mit = config.get("mitigation") or {}
    return mit.get("quality_captions") or mit.get("captions")


# ---------------------------------------------------------------- parts of a dataset (type part)
# With repeated splits a part that mitigation uses is redrawn per fold (mitigation.split.images): fold
# f > 0 reads the dataset "<part>~fold<f>", the part with its seed plus f, so that each fold fits on
# and audits other images; fold 0 keeps the part's own name and seed.
PARTS = ("reference", "evaluation")
PART_FRACTION = 0.5
PART_KEYS = ("type", "of", "part", "fraction", "seed", "stratify", "max_missing_fraction")
PART_ONLY_KEYS = ("of", "part", "fraction", "seed", "stratify")


def dataset_fold(name: str) -> tuple[str, int]:
    """`<dataset>~fold<f>` -> (dataset, f); a name without a fold tag is fold 0."""
    base, tag, fold = name.partition(FOLD_TAG)
    if tag and not fold.isdigit():
        raise VlmbiasError(f"dataset {name!r}: expected <dataset>{FOLD_TAG}<number>")
    return base, int(fold) if tag else 0


def dataset_entry(config: dict, name: str) -> dict:
    """A dataset's config entry; a fold's part (`<part>~fold<f>`) is its part's entry."""
    return config["datasets"][dataset_fold(name)[0]]


def mitigation_parts(config: dict) -> list[str]:
    """The part datasets mitigation uses: the audited one (mitigation.dataset) and BendVLM references."""
    mit = config.get("mitigation") or {}
    names = [mit.get("dataset")] + [reference_dataset(config, m) for m, v in (mit.get("methods") or {}).items()
                                    if v.get("kind") == "bendvlm"]
    datasets = config.get("datasets") or {}
    return [n for n in dict.fromkeys(names) if n in datasets and datasets[n].get("type") == "part"]


def image_folds(config: dict) -> bool:
    """Whether each fold redraws the parts mitigation uses (mitigation.split.images, default true; only
    with folds above 1 and a part in use)."""
    if n_folds(config) == 1 or not mitigation_parts(config):
        return False
    return bool(split_spec(config).get("images", True))


def fold_dataset(config: dict, name: str | None, fold: int | str = 0) -> str | None:
    """The dataset that stands for `name` in fold `fold`: `<name>~fold<f>` for a part mitigation
    redraws per fold (fold > 0), else `name` itself."""
    fold = int(fold)
    if name is None or not fold or not image_folds(config) or name not in mitigation_parts(config):
        return name
    return f"{name}{FOLD_TAG}{fold}"


def mitigation_dataset(config: dict, fold: int | str = 0) -> str:
    """The dataset the mitigation comparison audits in fold `fold` (mitigation.dataset, or its fold's part)."""
    return fold_dataset(config, config["mitigation"]["dataset"], fold)


def check_image_folds(config: dict) -> None:
    """mitigation.split.images: a boolean, and `true` only where a part can be redrawn."""
    images = split_spec(config).get("images")
    if images is None:
        return
    if not isinstance(images, bool):
        raise VlmbiasError(f"mitigation.split.images must be true or false, got {images!r}")
    if images and not mitigation_parts(config):
        raise VlmbiasError("mitigation.split.images: true redraws the part datasets mitigation uses in every fold, "
                           "but neither mitigation.dataset nor any BendVLM reference is a dataset of type part; "
                           "remove images, or split the dataset into parts (docs/data-roles.md)")


def parent_name(config: dict, name: str) -> str:
    """The dataset whose images a dataset holds: a part's parent (`of`), else the dataset itself."""
    name = dataset_fold(name)[0]
    spec = config["datasets"][name]
    return spec["of"] if spec.get("type") == "part" and spec.get("of") in config["datasets"] else name


def uses_world_data(config: dict, name: str) -> bool:
    """Whether a dataset reads the calibration world's generated data (itself, or its parent for a part)."""
    return bool(config["datasets"][parent_name(config, name)].get("world"))


def dataset_type(config: dict, name: str) -> str:
    """A dataset's type; a part's is its parent's (the images are the parent's)."""
    return config["datasets"][parent_name(config, name)]["type"]


def check_part(config: dict, name: str) -> None:
    """A `part` entry: `of` names another dataset that is not a part, `part` is reference or evaluation,
    0 < fraction < 1, and the keys that say where the images are stay on the parent."""
    datasets, spec = config.get("datasets") or {}, config["datasets"][name]
    key = f"datasets.{name}"
    defaults = {k: v["default"] for k, v in yaml.safe_load(SCHEMA.read_text())["$defs"]["dataset"]["properties"].items()
                if "default" in v}  # filled in by the workflow's schema check
    stray = [k for k in spec if k not in PART_KEYS and not (k in defaults and spec[k] == defaults[k])]
    if stray:
        raise VlmbiasError(f"{key}: a dataset of type part takes its images and labels from its parent (of); "
                           f"set {stray} on the parent entry, not on the part")
    of = spec.get("of")
    if of is None:
        raise VlmbiasError(f"{key}: a dataset of type part needs 'of', the dataset it is a part of")
    if of == name:
        raise VlmbiasError(f"{key}.of names the part itself; name the dataset to split")
    if of not in datasets:
        raise VlmbiasError(f"{key}.of {of!r} is not a configured dataset (known: {[d for d in datasets if d != name]})")
    if datasets[of]["type"] == "part":
        raise VlmbiasError(f"{key}.of {of!r} is itself a part; a part splits an original dataset (of: "
                           f"{datasets[of].get('of')})")
    if spec.get("part") not in PARTS:
        raise VlmbiasError(f"{key}.part {spec.get('part')!r} must be one of {list(PARTS)}")
    fraction = spec.get("fraction", PART_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise VlmbiasError(f"{key}.fraction {fraction!r} must be a number strictly between 0 and 1 (the share of "
                           f"{of!r}'s images in the reference part)")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise VlmbiasError(f"{key}.seed {seed!r} must be an integer")
    stratify = spec.get("stratify")
    if stratify is not None and (not isinstance(stratify, list) or not all(isinstance(a, str) for a in stratify)):
        raise VlmbiasError(f"{key}.stratify must be a list of attribute names, e.g. [gender, race]")


def _split_of(config: dict, name: str) -> tuple[dict, dict | None]:
    """(the resolved spec of the images a dataset is drawn from, its part settings or None)."""
    spec = dataset_spec(config, name)
    if spec["type"] != "part":
        return spec, None
    return spec["of"], {k: spec.get(k) for k in ("part", "fraction", "seed", "stratify")}


def check_reference_overlap(config: dict, key: str, ref: str) -> None:
    """A BendVLM reference set shares no image with the audited dataset: not the audited dataset, not
    its parent or a part of it, and, when both are parts of one dataset, the other part of the same split."""
    audited = config["mitigation"]["dataset"]
    ref_source, ref_part = _split_of(config, ref)
    aud_source, aud_part = _split_of(config, audited)
    if ref_source != aud_source:
        return
    if ref_part is None and aud_part is None:
        same = "is" if ref == audited else "holds the same images as"
        base = parent_name(config, audited)
        raise VlmbiasError(
            f"{key} {ref!r} {same} the audited dataset (mitigation.dataset): a method must not fit on the images "
            "it is judged on; name another split (e.g. FairFace's train split: type fairface, split train), or "
            "split the dataset into two parts, fitting on one and auditing the other:\n"
            f"  datasets: {{{base}-ref: {{type: part, of: {base}, part: reference}},\n"
            f"             {base}-eval: {{type: part, of: {base}, part: evaluation}}}}\n"
            f"  mitigation: {{dataset: {base}-eval}}, and {key}: {base}-ref")
    parent = parent_name(config, ref)
    if aud_part is None:
        raise VlmbiasError(f"{key} {ref!r} is a part of the audited dataset {audited!r} (mitigation.dataset), so "
                           "every reference image would be audited too; audit the other part instead (a dataset of "
                           f"type part with of: {parent}, part: evaluation and the same fraction, seed and stratify)")
    if ref_part is None:
        raise VlmbiasError(f"{key} {ref!r} holds every image of the audited part {audited!r} (mitigation.dataset); "
                           f"fit on the other part instead (a dataset of type part with of: "
                           f"{parent_name(config, audited)}, part: reference and the same fraction, seed and "
                           "stratify)")
    if ref_part["part"] == aud_part["part"]:
        raise VlmbiasError(f"{key} {ref!r} and the audited dataset {audited!r} (mitigation.dataset) are the same "
                           f"part ({ref_part['part']}) of {parent!r}; fit on its reference part and audit its "
                           "evaluation part")
    differ = [k for k in ("fraction", "seed", "stratify") if ref_part[k] != aud_part[k]]
    if differ:
        words = ", ".join(f"{k} {ref_part[k]!r} vs {aud_part[k]!r}" for k in differ)
        raise VlmbiasError(f"{key} {ref!r} and the audited dataset {audited!r} (mitigation.dataset) are parts of "
                           f"{parent!r} drawn differently ({words}), so they could share images; give both the "
                           "same fraction, seed and stratify")


def check_fold_leak(config: dict, key: str, model: str, dataset: str) -> None:
    """A method fitted on a part redrawn in fold f > 0 is not audited on images of the same parent that
    are not fold f's evaluation part: fold f's reference images lie among them."""
    _, method, fold = split_variant_fold(model)
    if not (method and fold and image_folds(config)):
        return
    ref = reference_dataset(config, method) if method_spec(config, method)["kind"] == "bendvlm" else None
    if ref in mitigation_parts(config) and parent_name(config, ref) == parent_name(config, dataset):
        raise VlmbiasError(f"{key}: model {model!r} fitted on fold {fold}'s reference part "
                           f"({fold_dataset(config, ref, fold)}), which shares images with dataset {dataset!r}; "
                           f"audit fold 0's model ({split_variant(model)[0]}~{method}) there instead")


def check_data_roles(config: dict) -> None:
    """A method's fitting data: a named dataset of the right type, never the audited one."""
    mit, datasets = config["mitigation"], config.get("datasets", {})
    named = [("mitigation.captions", mit.get("captions"), "captions"),
             ("mitigation.quality_captions", mit.get("quality_captions"), "captions")]
    for m, v in mit["methods"].items():
        if v["kind"] == "bendvlm":
            named.append((f"mitigation.methods.{m}.reference", reference_dataset(config, m), None))
        elif v["kind"] == "saner":
            named.append((f"mitigation.methods.{m}.captions", caption_dataset(config, m), "captions"))
    for key, ds, kind in named:
        if ds is None:
            if key.startswith("mitigation.methods."):
                raise VlmbiasError(f"{key} is not set: name a dataset to fit on (a labelled set for BendVLM's "
                                   "references, a caption set for SANER; with a calibration world, an entry "
                                   "with world: reference or world: train-captions)")
            continue
        if ds not in datasets:
            raise VlmbiasError(f"{key} {ds!r} is not a configured dataset (known: {list(datasets)})")
        if kind and datasets[ds]["type"] != kind:
            raise VlmbiasError(f"{key} {ds!r} must be a dataset of type {kind}, not {datasets[ds]['type']}")
        if kind is None:  # BendVLM's labelled reference set: no image of the audited set
            check_reference_overlap(config, key, ds)
        if datasets[ds].get("world") in (True, "test") and datasets[ds]["type"] != "captions":  # its test split
            raise VlmbiasError(f"{key} {ds!r} is the world's audited test split; name another dataset, or a part "
                               f"of it (type part, of: {ds}) with the other part audited")
        if kind is not None and ds == mit["dataset"]:
            raise VlmbiasError(f"{key} {ds!r} is the audited dataset (mitigation.dataset): a method must not fit on "
                               "the images it is judged on; name another caption set")


def method_fold(method: str) -> tuple[str, int]:
    """`<method>~fold<f>` -> (method, f); a method without a fold tag is fold 0."""
    name, tag, fold = method.partition(FOLD_TAG)
    if tag and not fold.isdigit():
        raise VlmbiasError(f"mitigated model method {method!r}: expected <method>{FOLD_TAG}<number>")
    return name, int(fold) if tag else 0


def split_variant(name: str) -> tuple[str, str | None]:
    """`<base>~<method>[~fold<f>]` -> (base, method); the fold is read by split_variant_fold."""
    base, method, _ = split_variant_fold(name)
    return base, method


def split_variant_fold(name: str) -> tuple[str, str | None, int]:
    base, _, method = name.partition("~")
    if not method:
        return base, None, 0
    method, fold = method_fold(method)
    return base, method, fold


def variant_name(config: dict, method: str, fold: int = 0) -> str:
    """The audited model of `method` in fold `fold`: `<base>~<method>`, and for a fitted method in a
    fold after the first `<base>~<method>~fold<f>` (fold 0 keeps the single split's name)."""
    base = f"{config['mitigation']['base_model']}~{method}"
    return f"{base}{FOLD_TAG}{fold}" if fold and fitted(config, method) else base


def variant_names(config: dict, fold: int | None = None) -> list[str]:
    """Every mitigated model (of every fold), or those compared in fold `fold`."""
    mit = config.get("mitigation")
    if not mit:
        return []
    folds = range(n_folds(config)) if fold is None else [fold]
    return list(dict.fromkeys(variant_name(config, m, f) for f in folds for m in mit["methods"]))


def method_spec(config: dict, method: str) -> dict:
    return dict(config["mitigation"]["methods"][method])


def split_spec(config: dict) -> dict:
    """mitigation.split with its default filled in (vlmbias.mitigate.split)."""
    from vlmbias.mitigate.split import DEFAULT

    return dict(config["mitigation"].get("split") or DEFAULT)


def mitigation_query_sets(config: dict) -> dict:
    return {q: config["query_sets"][q] for q in config["mitigation"]["query_sets"]}


def concept_split(config: dict, fold: int = 0):
    """The fitting / held-out split of the mitigation query sets' concepts in fold `fold` (a table, see split.py)."""
    from vlmbias.mitigate.split import concept_split as split

    return split(mitigation_query_sets(config), split_spec(config), int(fold))


def fitting_concepts(config: dict, fold: int = 0) -> list[str]:
    from vlmbias.mitigate.split import FITTING, concepts_of

    return concepts_of(concept_split(config, fold), FITTING)


def held_out_concepts(config: dict, fold: int = 0) -> list[str]:
    from vlmbias.mitigate.split import HELD_OUT, concepts_of

    return concepts_of(concept_split(config, fold), HELD_OUT)


def world_search_dir(config: dict) -> str:
    """The world's search-engine stand-in: one folder per concept + labels.csv (world.generate)."""
    return f"{world_data_dir(config)}/search"


def acquire_spec(config: dict, fold: int = 0) -> dict:
    """mitigation.acquire with fold `fold`'s held-out concepts excluded: the LoRA set never shows them.
    `world: true` reads the world's search stand-in as source `folder`."""
    spec = dict(config["mitigation"].get("acquire") or {})
    if spec:
        spec["exclude_concepts"] = sorted({*spec.get("exclude_concepts", []), *held_out_concepts(config, fold)})
    if spec.pop("world", False):
        spec["root"] = world_search_dir(config)
    return spec


def label_spec(config: dict) -> dict:
    """mitigation.label; `world: true` reads the true labels (and captions) of the world's search
    stand-in as source `csv`."""
    spec = dict(config["mitigation"].get("label") or {})
    if spec.pop("world", False):
        spec.update(csv=f"{world_search_dir(config)}/labels.csv", root=world_search_dir(config))
        spec.setdefault("caption_column", "caption")
    return spec


def uses_world_search(config: dict) -> bool:
    """Whether acquisition or labelling reads the world's search stand-in (a rule input then)."""
    mit = config.get("mitigation") or {}
    return any((mit.get(k) or {}).get("world") for k in ("acquire", "label"))


def image_model(config: dict, name: str) -> str:
    """Whose image embeddings a model uses: a text-side change leaves the base model's valid."""
    base, method = split_variant(name)
    if method is None:
        return name
    m = method_spec(config, method)
    towers = m.get("towers", (config["mitigation"].get("finetune") or {}).get("towers", ["text"]))
    return name if m["kind"] == "lora" and "vision" in towers else base


def finetune_spec(config: dict, method: str) -> dict:
    spec = {**(config["mitigation"].get("finetune") or {}), **method_spec(config, method)}
    spec.pop("kind")
    spec.pop("balanced", None)  # the method's own training set (rule `balance`), not a training option
    spec.setdefault("seed", config.get("seed", 0))
    return spec


def query_set_spec(config: dict, model: str, qset: str) -> dict:
    spec = dict(config["query_sets"][qset])
    _, method, fold = split_variant_fold(model)
    if method is None:
        return spec
    m = method_spec(config, method)
    transform = dict(spec.get("transform") or {})
    if m["kind"] == "prompt":
        transform["suffix"] = m["suffix"]
    elif m["kind"] == "projection":
        # calibration pairs come from the fitting concepts only, never from the audited query itself
        transform["projection"] = {**{k: v for k, v in m.items() if k != "kind"},
                                   "concepts": fitting_concepts(config, fold)}
    elif m["kind"] == "bendvlm":
        transform["bendvlm"] = {**{k: v for k, v in m.items() if k != "kind"},
                                "reference": reference_dir(config, method, fold)}
    elif m["kind"] == "saner":
        transform["saner"] = {"layer": saner_dir(config, method, fold)}
    if transform:
        spec["transform"] = transform
    return spec


def quality_transform(config: dict, model: str) -> dict:
    """The text transform quality applies to every text it encodes: a projection's, SANER's or
    BendVLM's (per text, with its reference set; vlmbias.mitigate.quality); prompt suffixes are
    query-only."""
    _, method = split_variant(model)
    if method is None or not config["mitigation"]["query_sets"]:
        return {}
    t = query_set_spec(config, model, config["mitigation"]["query_sets"][0]).get("transform") or {}
    return {k: v for k, v in t.items() if k in ("projection", "saner", "bendvlm")}


def protocol_query_sets(config: dict) -> list[str]:
    """The query sets of the config's protocol (docs/protocols.md); [] without one."""
    if not config.get("protocol"):
        return []
    from vlmbias.audit.protocols import protocol

    return list(protocol(config["protocol"]).get("query_sets") or [])


def protocol_deviations(config: dict) -> list[str]:
    """The protocol-fixed fields this run changes on purpose (vlmbias.audit.protocols.deviations)."""
    from vlmbias.audit.protocols import deviations

    return deviations(config)


def dataset_spec(config: dict, name: str) -> dict:
    """A dataset's spec; `world: true` resolves to the world's test split (FairFace layout) or, for
    type captions, its held-out caption set (world.generate: heldout_captions.csv). A `part` holds its
    parent's resolved spec under `of`, with its fraction and seed filled in; `<part>~fold<f>` is that
    part with seed + f (fold_dataset)."""
    base, fold = dataset_fold(name)
    if fold:  # a part redrawn in a later fold (mitigation.split.images): its seed plus the fold
        if base not in config["datasets"] or config["datasets"][base]["type"] != "part" or fold >= n_folds(config):
            raise VlmbiasError(f"dataset {name!r}: only a dataset of type part has folds, 1 to "
                               "mitigation.split.folds - 1")
        spec = dataset_spec(config, base)
        spec["seed"] = spec["seed"] + fold
        return spec
    spec = dict(config["datasets"][name])
    if spec["type"] == "part":  # the parent resolved as usual (world: true etc.), nested under `of`
        if config["datasets"].get(spec["of"], {}).get("type") == "part":
            raise VlmbiasError(f"datasets.{name}.of {spec['of']!r} is itself a part; split the original dataset")
        spec["of"] = dataset_spec(config, spec["of"])
        spec.setdefault("fraction", PART_FRACTION)
        spec.setdefault("seed", config.get("seed", 0))
        return spec
    world = spec.pop("world", False)
    if world:
        if world is True:  # the test split, or for type captions the held-out caption set
            world = "heldout-captions" if spec["type"] == "captions" else "test"
        if world == "test":
            spec["root"] = f"{world_data_dir(config)}/fairface"
        else:
            spec.update(root=world_data_dir(config), csv=WORLD_FILES[world][1])
            if world == "train-captions":
                spec.setdefault("attributes", ["gender", "race", "age", "concept"])
    return spec


def model_spec(config: dict, name: str) -> dict:
    base, method, fold = split_variant_fold(name)
    if method is not None:
        spec = model_spec(config, base)
        if method_spec(config, method)["kind"] == "lora":
            spec["adapter"] = adapter_dir(config, method, fold)
        elif method_spec(config, method)["kind"] == "prompt-array":
            spec["prompts"] = prompts_dir(config, method, fold)
        return spec
    spec = dict(config["models"][name])
    world = spec.pop("world", None)
    if world:
        spec.setdefault("backend", "hf")
        spec["name"] = world_model_dir(config, world)
    return spec


def validate(config: dict) -> None:
    """Schema errors as one sentence that names the key, e.g. `at models.clip.backend: 'hff' is not one of ...`.
    Presets named in `presets` are merged into `query_sets` first (in place)."""
    import jsonschema

    from vlmbias.audit.presets import apply_presets
    from vlmbias.audit.protocols import apply_protocol

    if not isinstance(config, dict):
        raise VlmbiasError("the config must be a mapping of keys to values")
    apply_protocol(config)  # a protocol's own query sets join the config with its preset
    apply_presets(config)
    validator = jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # oneOf/allOf failures hide the useful message one level down
        e = min((s for s in (errors[0].context or [])), key=lambda s: len(s.absolute_path), default=errors[0])
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise VlmbiasError(f"at {where}: {e.message}{more}")
    from vlmbias.audit.expand import expand_models

    expand_models(config)  # `expand` entries -> one model per open_clip (arch, tag) pair, before any check
    check_config(config)


def load_config(path: str | Path) -> dict:
    """Load and validate a config file outside Snakemake (CLI, tests)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise VlmbiasError(f"cannot read config {path}: {e}") from None
    try:
        validate(config)
    except VlmbiasError as e:
        raise VlmbiasError(f"config {path}: {e}") from None
    return config
