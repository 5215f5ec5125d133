"""Model entries that stand for many models: every open_clip (architecture, pretrained tag) pair
matching a pattern becomes its own model, audited by its own jobs.

    models:
      b32-all:
        backend: open_clip
        expand: {arch: "ViT-B-32*", pretrained: "*", exclude: ["*:commonpool_s*"]}

`arch`, `pretrained` (default "*") and `exclude` are shell-style globs (fnmatch, case-sensitive),
each a string or a list: `arch` over architecture names, `pretrained` over tags, `exclude` over
"<arch>:<tag>". The pairs are open_clip's own (`open_clip.list_pretrained()`) plus the entry's
local `tags` ({"<arch>:<tag>": file.safetensors}). Each pair becomes the model "<arch>.<tag>"
(a valid `model` wildcard), in open_clip's order, with the entry's other keys (precision, config)
and, for a local tag, its `tags` line only (so adding a tag to the entry reruns nothing else).

Expansion runs once, in `vlmbias.config.validate`, and rewrites `config["models"]` in place; the
lists that name models (audit.models, zeroshot.models, experiments.*.models) get the entry's
expansion where they name the entry. A pattern matching nothing, a name two entries produce, and
a single-model reference (mitigation.base_model, experiments.*.model) to a multi-model entry are
errors that say so.
"""
from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase
from pathlib import Path

from vlmbias import VlmbiasError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # the workflow's model wildcard, without '~' (mitigation variants)
INHERITED = ("precision", "config")  # entry keys every expanded model keeps


def _patterns(value, where: str) -> list[str]:
    pats = [value] if isinstance(value, str) else list(value or [])
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise VlmbiasError(f"{where} must be a non-empty pattern or list of patterns, got {value!r}")
    return pats


def _few(names: list[str], pattern: str, n: int = 8) -> list[str]:
    """A few available names to show beside a pattern that matched nothing: the closest first."""
    close = difflib.get_close_matches(pattern.replace("*", ""), names, n=n, cutoff=0.3)
    folded = [x for x in names if fnmatchcase(x.lower(), pattern.lower())]  # a case slip
    return list(dict.fromkeys(folded + close + names))[:n]


def _local_architectures(spec: dict) -> set[str]:
    """Architectures the entry's `config` (a JSON file or a folder of them) defines: open_clip names
    an added config by its file's stem."""
    if not spec.get("config"):
        return set()
    cfg = Path(spec["config"])
    return {cfg.stem} if cfg.is_file() else {p.stem for p in cfg.glob("*.json")}


def candidate_pairs(spec: dict, where: str) -> tuple[list[tuple[str, str]], dict]:
    """open_clip's (architecture, tag) pairs plus the entry's local tags, in that order, and the
    local tags ({(arch, tag): file})."""
    import open_clip

    from vlmbias.encoders.models import local_tags

    local = local_tags(spec, where)
    # a local tag this process registered already (vlmbias.encoders.models.register_open_clip) is no clash
    known = [p for p in open_clip.list_pretrained()
             if not (p in local and open_clip.pretrained.get_pretrained_cfg(*p).get("file") == str(local[p]))]
    archs = set(open_clip.list_models()) | _local_architectures(spec)
    for arch, tag in local:
        if (arch, tag) in known:
            raise VlmbiasError(f"{where}.tags: {arch}:{tag} is already an open_clip pretrained tag; "
                               "name the local checkpoint differently")
        if arch not in archs:
            raise VlmbiasError(f"{where}.tags: architecture {arch!r} is neither an open_clip model nor defined by "
                               f"the entry's `config` (similar: {_few(sorted(archs), arch, 5)})")
    return known + list(local), local


def expand_entry(entry: str, spec: dict) -> dict[str, dict]:
    """{model name: plain open_clip spec} for one `expand` entry; errors name the pattern."""
    where = f"models.{entry}"
    if spec.get("backend") != "open_clip":
        raise VlmbiasError(f"{where}: `expand` lists open_clip pretrained tags; it needs backend open_clip, "
                           f"not {spec.get('backend')!r}")
    clash = [k for k in ("name", "pretrained", "world", "adapter") if spec.get(k) is not None]
    if clash:
        raise VlmbiasError(f"{where}: an `expand` entry takes its models from the patterns; remove {clash}")
    rule = spec["expand"] or {}
    arch_pats = _patterns(rule.get("arch"), f"{where}.expand.arch")
    tag_pats = _patterns(rule.get("pretrained", "*"), f"{where}.expand.pretrained")
    exclude = _patterns(rule["exclude"], f"{where}.expand.exclude") if rule.get("exclude") else []
    pairs, local = candidate_pairs(spec, where)
    archs = list(dict.fromkeys(a for a, _ in pairs))
    for pat in arch_pats:
        if not any(fnmatchcase(a, pat) for a in archs):
            raise VlmbiasError(f"{where}.expand.arch: pattern {pat!r} matches no open_clip architecture with a "
                               f"pretrained tag (patterns are case-sensitive; e.g. {_few(archs, pat)}; "
                               f"{len(archs)} in all: python -c 'import open_clip; print(open_clip.list_pretrained())')")
    chosen = [(a, t) for a, t in pairs if any(fnmatchcase(a, p) for p in arch_pats)]
    tags = list(dict.fromkeys(t for _, t in chosen))
    for pat in tag_pats:
        if not any(fnmatchcase(t, pat) for t in tags):
            raise VlmbiasError(f"{where}.expand.pretrained: pattern {pat!r} matches no tag of the architectures "
                               f"{arch_pats} (their tags include {_few(tags, pat)})")
    chosen = [(a, t) for a, t in chosen if any(fnmatchcase(t, p) for p in tag_pats)]
    for pat in exclude:
        if not any(fnmatchcase(f"{a}:{t}", pat) for a, t in chosen):
            raise VlmbiasError(f"{where}.expand.exclude: pattern {pat!r} excludes nothing (it is matched against "
                               f"'<arch>:<tag>', e.g. {[f'{a}:{t}' for a, t in chosen[:3]]})")
    chosen = [(a, t) for a, t in chosen if not any(fnmatchcase(f"{a}:{t}", p) for p in exclude)]
    if not chosen:
        raise VlmbiasError(f"{where}.expand: `exclude` {exclude} leaves no model")
    out = {}
    for arch, tag in chosen:
        name = f"{arch}.{tag}"
        if not NAME.fullmatch(name):
            raise VlmbiasError(f"{where}: {arch}:{tag} gives the model name {name!r}, which is not a valid model "
                               "name ([A-Za-z0-9_.-]); exclude it or give it its own entry")
        if name in out:
            raise VlmbiasError(f"{where}: two pairs give the model name {name!r}")
        out[name] = {"backend": "open_clip", "name": arch, "pretrained": tag,
                     **{k: spec[k] for k in INHERITED if spec.get(k) is not None}}
        if (arch, tag) in local:
            out[name]["tags"] = {f"{arch}:{tag}": str(local[(arch, tag)])}
    return out


def expand_models(config: dict) -> dict[str, list[str]]:
    """Rewrite config["models"] with every `expand` entry replaced by its models (in place, in the
    entries' order) and the model lists that name such an entry; returns {entry: [model names]}."""
    models = config.get("models") or {}
    if not any(isinstance(s, dict) and "expand" in s for s in models.values()):
        return {}
    made: dict[str, list[str]] = {}
    origin = {n: f"models.{n}" for n, s in models.items() if "expand" not in s}
    out = {}
    for entry, spec in models.items():
        if "expand" not in spec:
            out[entry] = spec
            continue
        made[entry] = []
        for name, sub in expand_entry(entry, spec).items():
            if name in origin:
                raise VlmbiasError(f"models.{entry} (expand) gives the model name {name!r}, which "
                                   f"{origin[name]} already names; rename that entry or exclude "
                                   f"{sub['name']}:{sub['pretrained']}")
            origin[name] = f"models.{entry} (expand)"
            out[name] = sub
            made[entry].append(name)
    config["models"] = out
    _rewrite_references(config, made)
    return made


def _rewrite_references(config: dict, made: dict[str, list[str]]) -> None:
    def expanded(names):
        return list(dict.fromkeys(m for n in names for m in made.get(n, [n])))

    lists = [config.get("audit") or {}, config.get("zeroshot") or {}, *(config.get("experiments") or {}).values()]
    for block in lists:
        if isinstance(block, dict) and isinstance(block.get("models"), list):
            block["models"] = expanded(block["models"])
    singles = [("mitigation.base_model", (config.get("mitigation") or {}).get("base_model"))]
    singles += [(f"experiments.{e}.model", s.get("model")) for e, s in (config.get("experiments") or {}).items()
                if isinstance(s, dict)]
    for key, name in singles:
        if name in made:
            raise VlmbiasError(f"{key} names {name!r}, an `expand` entry of {len(made[name])} models; name one "
                               f"of them, e.g. {made[name][:3]}")
