"""The calibration world's spec: every key of the `world` config block with its default, the words
captions are made of (templates, group names, filler), and `resolve_spec`, which validates a spec and
computes every (concept, language) planted distribution."""
from __future__ import annotations

from copy import deepcopy

import numpy as np

from vlmbias import VlmbiasError
from vlmbias.audit.data import FAIRFACE_CLASSES
from vlmbias.world.render import FIGURES, SCENES

# FairFace's schema, class names and order exactly, so the audit reads the world like FairFace.
CLASSES = FAIRFACE_CLASSES
ATTRIBUTES = list(CLASSES)

DEFAULT_TEMPLATES = {
    "en": ["{}", "a photo of {}", "{} at work", "portrait of {}", "a picture showing {}",
           "{} photographed at work", "an image of {}", "stock photo of {}"],
    "zh": ["{}", "{}的照片", "一位{}", "正在工作的{}", "{}的肖像", "一张{}的图片"],
    "ar": ["{}", "صورة {}", "{} في العمل", "صورة شخصية ل{}"],
}

# Words that name a group, per language. The English race names include the thesis' own wording
# ("a East Asian person") next to the grammatical one, as web captions would.
DEFAULT_GROUP_NAMES = {
    "gender": {
        "Male": {"en": ["a man", "a male person"], "zh": ["男人", "男性"]},
        "Female": {"en": ["a woman", "a female person"], "zh": ["女人", "女性"]},
    },
    "race": {
        "East Asian": {"en": ["an East Asian person", "a East Asian person"], "zh": ["东亚人"]},
        "Indian": {"en": ["an Indian person", "a Indian person"], "zh": ["印度人"]},
        "Black": {"en": ["a Black person"], "zh": ["黑人"]},
        "White": {"en": ["a White person"], "zh": ["白人"]},
        "Middle Eastern": {"en": ["a Middle Eastern person"], "zh": ["中东人"]},
        "Latino_Hispanic": {"en": ["a Latino/Hispanic person", "a Latino person", "a Hispanic person"],
                            "zh": ["拉丁裔"]},
        "Southeast Asian": {"en": ["a Southeast Asian person"], "zh": ["东南亚人"]},
    },
    "age": {
        "0-2": {"en": ["a baby"], "zh": ["婴儿"]},
        "3-9": {"en": ["a child"], "zh": ["儿童"]},
        "10-19": {"en": ["a teenager"], "zh": ["青少年"]},
        "20-29": {"en": ["a person in their twenties"], "zh": ["二十多岁的人"]},
        "30-39": {"en": ["a person in their thirties"], "zh": ["三十多岁的人"]},
        "40-49": {"en": ["a person in their forties"], "zh": ["四十多岁的人"]},
        "50-59": {"en": ["a person in their fifties"], "zh": ["五十多岁的人"]},
        "60-69": {"en": ["a person in their sixties"], "zh": ["六十多岁的人"]},
        "more than 70": {"en": ["an elderly person over seventy"], "zh": ["七十多岁的老人"]},
    },
}
# "a Black man": the race word without "person", then the gender noun.
RACE_ADJ = {"en": {"East Asian": "East Asian", "Indian": "Indian", "Black": "Black", "White": "White",
                    "Middle Eastern": "Middle Eastern", "Latino_Hispanic": "Latino/Hispanic",
                    "Southeast Asian": "Southeast Asian"},
             "zh": {"East Asian": "东亚", "Indian": "印度", "Black": "黑人", "White": "白人",
                    "Middle Eastern": "中东", "Latino_Hispanic": "拉丁裔", "Southeast Asian": "东南亚"}}
GENDER_NOUN = {"en": {"Male": "man", "Female": "woman"}, "zh": {"Male": "男性", "Female": "女性"}}
# Nouns of the balancing filler's uninformative captions ("a photo of someone"), words no concept or
# group name uses. They go through the same templates as every other caption: template words
# ("a photo of") then co-occur with a balanced corpus. Without that they soaked up the average
# concept skew (mostly Male), and a bare query ("an accountant") came out with the opposite lean.
FILLER_NAMES = {"en": ["someone", "somebody", "a subject"], "zh": ["无名者", "某位"], "ar": ["شخص ما"]}

# Every key the `world` block may hold (the JSON schema mirrors this), with its default.
DEFAULTS: dict = {
    "seed": 0,
    "image_size": 32,
    "evidence_rate": 0.4,
    "noise": 0.04,
    "clutter": 1.0,
    "decoy_rate": 0.5,
    "scene_affinity": 0.5,
    "images_per_concept": 150,
    "heldout_fraction": 0.1,
    "group_images": 1400,
    "group_mix": {"gender": 0.3, "race": 0.4, "gender_race": 0.2, "age": 0.1},
    "group_languages": ["en", "zh"],
    "balance_marginals": True,
    "test_per_cell": 50,
    "base": {},
    "templates": DEFAULT_TEMPLATES,
    "concepts": None,
    "model": {},
}


def class_distribution(attr: str, given, where: str) -> dict[str, float]:
    """`uniform` / None -> uniform; a partial {class: p} -> the rest spread evenly over the other classes."""
    classes = CLASSES[attr]
    if given in (None, "uniform"):
        return {c: 1.0 / len(classes) for c in classes}
    if not isinstance(given, dict):
        raise VlmbiasError(f"{where}: {attr} must be 'uniform' or a mapping class -> proportion, got {given!r}")
    bad = [c for c in given if c not in classes]
    if bad:
        raise VlmbiasError(f"{where}: unknown {attr} class(es) {bad}; expected some of {classes}")
    if any(not 0 <= float(p) <= 1 for p in given.values()):
        raise VlmbiasError(f"{where}: {attr} proportions must lie in [0, 1]: {given}")
    total = sum(float(p) for p in given.values())
    rest = [c for c in classes if c not in given]
    if total > 1 + 1e-9 or (not rest and abs(total - 1) > 1e-6):
        raise VlmbiasError(f"{where}: {attr} proportions sum to {total:g}; they must sum to <= 1 (= 1 when "
                           "every class is listed)")
    out = {c: float(given.get(c, 0.0)) for c in classes}
    for c in rest:
        out[c] = (1.0 - total) / len(rest)
    return out


def _planted(base: dict, override: dict | None, where: str) -> dict[str, dict[str, float]]:
    """Planted distribution: the base for every attribute, replaced where the concept plants one.
    A partial plant ({Male: 0.8}) spreads the remainder over the other classes in base proportions."""
    out = {a: dict(d) for a, d in base.items()}
    for attr, given in (override or {}).items():
        if attr not in CLASSES:
            raise VlmbiasError(f"{where}: unknown attribute {attr!r}; expected one of {ATTRIBUTES}")
        if given in (None, "uniform"):
            out[attr] = class_distribution(attr, given, where)
            continue
        class_distribution(attr, given, where)  # validates
        total = sum(float(p) for p in given.values())
        rest = [c for c in CLASSES[attr] if c not in given]
        base_rest = sum(base[attr][c] for c in rest)
        out[attr] = {c: float(given[c]) if c in given else
                     (1 - total) * (base[attr][c] / base_rest if base_rest > 0 else 1 / len(rest))
                     for c in CLASSES[attr]}
    return out


def resolve_spec(spec: dict) -> dict:
    """Fill defaults, validate, and compute every (concept, lang) planted distribution."""
    spec = deepcopy(spec or {})
    if "world" in spec and isinstance(spec["world"], dict):  # accept the whole config file too
        spec = spec["world"]
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise VlmbiasError(f"world spec: unknown key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    out = {**deepcopy(DEFAULTS), **spec}
    out["templates"] = {**DEFAULT_TEMPLATES, **(spec.get("templates") or {})}
    if not out["concepts"]:
        raise VlmbiasError("world spec: 'concepts' is empty; the world needs at least one concept")
    if not 8 <= int(out["image_size"]) <= 512:
        raise VlmbiasError(f"world spec: image_size {out['image_size']} outside 8..512")
    if not 0 <= float(out["evidence_rate"]) <= 1:
        raise VlmbiasError(f"world spec: evidence_rate {out['evidence_rate']} outside [0, 1]")
    if not 0 <= float(out["heldout_fraction"]) < 1:
        raise VlmbiasError(f"world spec: heldout_fraction {out['heldout_fraction']} outside [0, 1)")
    bad = sorted(set(out["base"]) - set(CLASSES))
    if bad:
        raise VlmbiasError(f"world spec: base has unknown attribute(s) {bad}")
    base = {a: class_distribution(a, out["base"].get(a), f"base.{a}") for a in ATTRIBUTES}
    out["base_resolved"] = base
    mix = out["group_mix"]
    if set(mix) - {"gender", "race", "gender_race", "age"} or any(float(v) < 0 for v in mix.values()):
        raise VlmbiasError(f"world spec: group_mix keys must be gender, race, gender_race, age (>= 0): {mix}")
    for lang in out["group_languages"]:
        if lang not in GENDER_NOUN:
            raise VlmbiasError(f"world spec: no group names for language {lang!r}; have {sorted(GENDER_NOUN)}")
    table = {}
    for concept, c in out["concepts"].items():
        where = f"concepts.{concept}"
        if not isinstance(c, dict) or not c.get("names"):
            raise VlmbiasError(f"{where}: needs 'names' ({{lang: name or [names]}})")
        extra = sorted(set(c) - {"names", "planted", "by_lang", "family", "images", "figure"})
        if extra:
            raise VlmbiasError(f"{where}: unknown key(s) {extra}")
        if c.get("figure", "person") not in FIGURES:
            raise VlmbiasError(f"{where}: figure must be one of {list(FIGURES)}, got {c['figure']!r}")
        for lang in c["names"]:
            if lang not in out["templates"]:
                raise VlmbiasError(f"{where}: no caption templates for language {lang!r}")
        bad = sorted(set(c.get("by_lang") or {}) - set(c["names"]))
        if bad:
            raise VlmbiasError(f"{where}: by_lang names language(s) {bad} that have no names")
        common = _planted(base, c.get("planted"), where)
        for lang in c["names"]:
            table[(concept, lang)] = _planted(common, (c.get("by_lang") or {}).get(lang), f"{where}.by_lang.{lang}")
    out["planted_resolved"] = {f"{k[0]}|{k[1]}": v for k, v in table.items()}
    out["scene_resolved"] = _assign_scenes(out, base)
    return out


def _assign_scenes(spec: dict, base: dict) -> dict[str, str]:
    """Each concept's preferred scene, chosen greedily so that every scene's concepts together stay
    close to the base demographics (strongest skews first, each to the scene whose summed skew it
    offsets best; ties to the scene with fewer concepts). The filler then balances the remainder."""
    vec = {}
    for concept, c in spec["concepts"].items():
        v = np.zeros(sum(len(CLASSES[a]) for a in ("gender", "race")))
        for lang in c["names"]:
            planted = spec["planted_resolved"][f"{concept}|{lang}"]
            n = int((c.get("images") or {}).get(lang, spec["images_per_concept"]))
            v += n * np.array([planted[a][k] - base[a][k] for a in ("gender", "race") for k in CLASSES[a]])
        vec[concept] = v
    load = {sc: np.zeros_like(next(iter(vec.values()))) for sc in SCENES}
    count = dict.fromkeys(SCENES, 0)
    out = {}
    for concept in sorted(vec, key=lambda k: (-np.abs(vec[k]).sum(), list(vec).index(k))):
        best = min(SCENES, key=lambda sc: (round(float(np.square(load[sc] + vec[concept]).sum()
                                                      - np.square(load[sc]).sum()), 6), count[sc]))
        load[best] += vec[concept]
        count[best] += 1
        out[concept] = best
    return out


def as_names(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
