"""LoRA fine-tuning of a Hugging Face CLIPModel on a demographically balanced set (thesis 2.7, 3.4).

Input: a table in the dataset-manifest schema plus text — `image_id, path, caption, concept,
gender, race, age` (age: a FairFace bin such as "20-29", "more than 70", or a number). Output, in
`out_dir`: the peft adapter only (`adapter_config.json`, `adapter_model.safetensors`), loadable with
`PeftModel.from_pretrained(CLIPModel.from_pretrained(base, use_safetensors=True), out_dir)` or
`vlmbias.encoders.models.load_encoder({"backend": "hf", "name": base, "adapter": out_dir})`;
`losses.csv` (`epoch, step_count, loss, <components...>, seconds`; `step_count` = optimizer steps
in that epoch, losses are their means); `vlmbias_finetune.json` (`towers, objective, base, spec`,
and `image_embeddings_unchanged`, true for text-only adapters, so the workflow can reuse the base
model's image embeddings).

Objectives (`spec["objective"]`):
- `thesis` (default): the thesis objective as published — linear heads on the (projected) *text*
  embedding of each caption predict the gender, race and profession (concept) of the paired
  image (cross-entropy, inverse-class-frequency weights) and regress its age (MSE on the bin
  midpoint / `age_scale`, weight `age_weight`): loss = gender + race + age_weight*age + profession.
  No contrastive term; the image only supplies labels, so images are never loaded.
- `contrastive`: CLIP's symmetric InfoNCE on the balanced (image, caption) pairs with the model's
  (frozen) logit_scale. Rows of a batch that share a caption are all positives of each other
  (soft targets) — with one caption per concept, plain InfoNCE would punish an image for matching
  its own caption's duplicate; with distinct captions this is exactly CLIP's loss.
- `adversarial`: the contrastive loss plus one adversary per attribute in `adv_attributes`
  behind a gradient-reversal layer (Ganin & Lempitsky 2015; thesis 2.7.3; Berg et al. 2022),
  weight `adv_weight`. See `_adversary_inputs` for what the adversary sees and why. One backward
  pass per step: the adversaries minimise their cross-entropy, the adapters get the contrastive
  gradient minus adv_weight x the adversaries'. `loss` in losses.csv is contrastive + the
  adversaries' cross-entropies (the scalar that is backpropagated). The adversaries learn at
  `head_lr` (default: lr); with the thesis lr of 1e-5 they learn slowly, so ~1e-3 is a sensible
  choice for them.

Spec keys and defaults: `DEFAULTS` below (thesis values: r=16, alpha=32, q_proj/v_proj, dropout 0.1,
AdamW lr 1e-5, batch 4, 15 epochs). `towers` picks the tower(s) that get adapters (`text`,
`vision`); LoRA targets are restricted to `text_model.*` / `vision_model.*` by a regex.

Runs are seeded and deterministic on CPU: the same spec, data and thread count give a
byte-identical adapter.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from vlmbias import VlmbiasError, __version__
from vlmbias.encoders.models import features, load_hf_parts
from vlmbias.imagegate import DEFAULT_MAX_PIXELS
from vlmbias.io import parse_json_arg, read_table, run_cli
from vlmbias.training import (contrastive_loss, deterministic, is_number, load_pixels, save_trained, shuffled_batches,
                              train_steps)

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OBJECTIVES = ("thesis", "contrastive", "adversarial")
TOWERS = {"text": "text_model", "vision": "vision_model"}
DEFAULTS: dict = {
    "objective": "thesis",
    "towers": ["text"],
    # LoRA (thesis: LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], ...))
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "v_proj"],
    "lora_dropout": 0.1,
    "bias": "none",
    # optimisation (thesis: AdamW lr 1e-5, batch 4, 15 epochs)
    "lr": 1e-5,
    "head_lr": None,          # learning rate of the heads / adversaries; None = lr
    "weight_decay": 0.01,     # torch.optim.AdamW's default
    "batch_size": 4,
    "epochs": 15,
    "max_steps": None,        # cap on optimizer steps (smoke tests)
    "seed": 0,
    # thesis objective
    "age_weight": 0.1,
    "age_scale": 100.0,       # age targets are bin midpoints in years / age_scale
    # adversarial objective
    "adv_weight": 1.0,
    "adv_attributes": ["gender", "race"],
    "adv_hidden": 32,
    "neutral_template": None,  # e.g. "a photo of a {concept}"; None = each concept's most frequent caption
    # data checks
    "classes": {},            # {attribute: [classes]}: fixes class lists; a listed class with no image is an error
    "balance": [],            # attributes every concept must cover with every class
}
THESIS_ATTRIBUTES = ("gender", "race")
BASE_COLUMNS = {"thesis": ["image_id", "caption", "concept", "gender", "race", "age"],
                "contrastive": ["image_id", "path", "caption"],
                "adversarial": ["image_id", "path", "caption", "concept"]}
_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*$")
_OVER = re.compile(r"^\s*(?:more than|over|>)\s*(\d+(?:\.\d+)?)\s*$|^\s*(\d+(?:\.\d+)?)\s*\+\s*$", re.I)


# --------------------------------------------------------------------------- small pieces

class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by -weight in the backward pass."""
    return _GradReverse.apply(x, float(weight))


def inverse_frequency_weights(labels: Sequence, classes: Sequence) -> torch.Tensor:
    """Class weights n / (K * n_c): inversely proportional to class frequency, 1 for balanced data."""
    labels = list(labels)
    counts = [sum(1 for x in labels if x == c) for c in classes]
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise VlmbiasError(f"class(es) {empty} have no examples; inverse-frequency weights need every class")
    return torch.tensor([len(labels) / (len(classes) * n) for n in counts], dtype=torch.float32)


def age_midpoint(value) -> float:
    """Years for an age label: a bin "20-29" -> 24.5, "more than 70" / "70+" -> 75, a number -> itself."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    text = str(value)
    if m := _RANGE.match(text):
        return (float(m[1]) + float(m[2])) / 2
    if m := _OVER.match(text):
        return float(m[1] or m[2]) + 5.0
    try:
        v = float(text)
        if math.isfinite(v):
            return v
    except ValueError:
        pass
    raise VlmbiasError(f"cannot read age {value!r}: expected a bin like '20-29', 'more than 70' or a number")


# --------------------------------------------------------------------------- spec & data checks

def resolve_spec(spec: dict | None) -> dict:
    """Defaults filled in and every key checked; errors name the key."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise VlmbiasError(f"unknown fine-tuning spec key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **{k: v for k, v in spec.items()}}
    if s["objective"] not in OBJECTIVES:
        raise VlmbiasError(f"unknown fine-tuning objective {s['objective']!r}; expected one of {list(OBJECTIVES)}")
    towers = s["towers"]
    if isinstance(towers, str):
        towers = [towers]
    if (not isinstance(towers, (list, tuple)) or not towers or len(set(towers)) != len(towers)
            or any(t not in TOWERS for t in towers)):
        raise VlmbiasError(f"invalid towers {s['towers']!r}: give a non-empty list of distinct names from {list(TOWERS)}")
    s["towers"] = [t for t in TOWERS if t in towers]  # canonical order
    if s["objective"] == "thesis" and s["towers"] != ["text"]:
        raise VlmbiasError(f"the thesis objective only reads the text embedding, so adapters on the vision tower "
                           f"would never be trained; use towers ['text'] (got {s['towers']})")
    tm = s["target_modules"]
    if isinstance(tm, str):
        tm = [tm]
    if not isinstance(tm, (list, tuple)) or not tm or not all(isinstance(m, str) and m for m in tm):
        raise VlmbiasError(f"target_modules must be a non-empty list of module names, got {s['target_modules']!r}")
    s["target_modules"] = list(tm)
    for key, lo in (("r", 1), ("batch_size", 1), ("epochs", 1), ("adv_hidden", 1)):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < lo:
            raise VlmbiasError(f"spec {key!r} must be an integer >= {lo}, got {s[key]!r}")
    if not isinstance(s["seed"], int) or isinstance(s["seed"], bool):
        raise VlmbiasError(f"spec 'seed' must be an integer, got {s['seed']!r}")
    if s["max_steps"] is not None and (not isinstance(s["max_steps"], int) or s["max_steps"] < 1):
        raise VlmbiasError(f"spec 'max_steps' must be null or an integer >= 1, got {s['max_steps']!r}")
    for key in ("lora_alpha", "lr", "age_scale"):
        if not is_number(s[key]) or s[key] <= 0:
            raise VlmbiasError(f"spec {key!r} must be a positive number, got {s[key]!r}")
    for key in ("weight_decay", "age_weight", "adv_weight"):
        if not is_number(s[key]) or s[key] < 0:
            raise VlmbiasError(f"spec {key!r} must be a number >= 0, got {s[key]!r}")
    if s["head_lr"] is not None and (not is_number(s["head_lr"]) or s["head_lr"] <= 0):
        raise VlmbiasError(f"spec 'head_lr' must be null or a positive number, got {s['head_lr']!r}")
    if not is_number(s["lora_dropout"]) or not 0 <= s["lora_dropout"] < 1:
        raise VlmbiasError(f"spec 'lora_dropout' must be in [0, 1), got {s['lora_dropout']!r}")
    if s["bias"] not in ("none", "lora_only", "all"):
        raise VlmbiasError(f"spec 'bias' must be 'none', 'lora_only' or 'all', got {s['bias']!r}")
    if s["bias"] == "all" and s["towers"] != list(TOWERS):
        raise VlmbiasError("bias 'all' trains the biases of both towers; with adapters on "
                           f"{s['towers']} only, use bias 'none' or 'lora_only'")
    for key in ("adv_attributes", "balance"):
        v = s[key]
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(a, str) and a for a in v) or len(set(v)) != len(v):
            raise VlmbiasError(f"spec {key!r} must be a list of distinct column names, got {s[key]!r}")
        s[key] = list(v)
    if s["objective"] == "adversarial" and not s["adv_attributes"]:
        raise VlmbiasError("the adversarial objective needs at least one attribute in 'adv_attributes'")
    if not isinstance(s["classes"], dict) or not all(isinstance(v, (list, tuple)) and v for v in s["classes"].values()):
        raise VlmbiasError(f"spec 'classes' must map attribute names to non-empty class lists, got {s['classes']!r}")
    s["classes"] = {str(k): [str(c) for c in v] for k, v in s["classes"].items()}
    nt = s["neutral_template"]
    if nt is not None and (not isinstance(nt, str) or "{concept}" not in nt):
        raise VlmbiasError(f"spec 'neutral_template' must be a string containing '{{concept}}', got {nt!r}")
    return s



def _label_attributes(s: dict) -> list[str]:
    """Demographic attributes whose classes the objective uses."""
    if s["objective"] == "thesis":
        return list(THESIS_ATTRIBUTES)
    if s["objective"] == "adversarial":
        return list(s["adv_attributes"])
    return []


def check_table(table: pd.DataFrame, s: dict) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Validate the fine-tuning table for spec `s`; return it (labels as str) and each used attribute's classes."""
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise VlmbiasError("the fine-tuning table is empty; there is nothing to train on")
    attrs = _label_attributes(s)
    needed = list(dict.fromkeys(BASE_COLUMNS[s["objective"]] + attrs + s["balance"]
                                + (["concept"] if s["balance"] else [])))
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise VlmbiasError(f"the fine-tuning table is missing column(s) {missing} needed by objective "
                           f"{s['objective']!r}; it has {list(table.columns)}")
    df = table.reset_index(drop=True).copy()
    for c in needed:
        bad = df[c].isna() | (df[c].astype(str).str.strip() == "")
        if bad.any():
            ids = df.loc[bad, "image_id"].astype(str).tolist()
            raise VlmbiasError(f"column {c!r} of the fine-tuning table is empty for {int(bad.sum())} row(s), "
                               f"e.g. image_id {ids[:3]}")
        if c not in ("age",):
            df[c] = df[c].astype(str)
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise VlmbiasError(f"the fine-tuning table has duplicate image_id(s) {dup.unique()[:5].tolist()}")

    classes: dict[str, list[str]] = {}
    used = list(dict.fromkeys(attrs + s["balance"] + (["concept"] if s["objective"] == "thesis" else [])))
    for a in used:
        present = df[a].unique().tolist()
        if a in s["classes"]:
            listed = s["classes"][a]
            extra = sorted(set(present) - set(listed))
            if extra:
                raise VlmbiasError(f"attribute {a!r} has value(s) {extra} not in the classes given in the spec {listed}")
            absent = [c for c in listed if c not in present]
            if absent:
                raise VlmbiasError(f"{a} class(es) {absent} have no examples in the fine-tuning table, but the "
                                   f"{s['objective']} objective uses {a!r} with classes {listed}")
            classes[a] = listed
        else:
            classes[a] = sorted(present)
        if a in attrs and len(classes[a]) < 2:
            raise VlmbiasError(f"attribute {a!r} has a single class {classes[a]} in the fine-tuning table; the "
                               f"{s['objective']} objective needs at least two {a} classes")
    for a in s["balance"]:
        for concept, group in df.groupby("concept", sort=True):
            absent = [c for c in classes[a] if c not in set(group[a])]
            if absent:
                raise VlmbiasError(f"concept {concept!r} has no images of {a} class(es) {absent}; the spec asks "
                                   f"every concept to cover every {a} class (spec 'balance')")
    if s["objective"] == "thesis":
        df["age_target"] = [age_midpoint(v) / s["age_scale"] for v in df["age"]]
    return df, classes


# --------------------------------------------------------------------------- model pieces

def load_base(base: str):
    """(CLIPModel from safetensors, tokenizer, image processor) of the base to adapt: transformers'
    model, which peft wraps and trains."""
    return load_hf_parts(base, torch.float32, "base model", native=False)


def target_regex(towers: Sequence[str], modules: Sequence[str]) -> str:
    """A peft target_modules regex (matched with re.fullmatch against module names) restricting
    `modules` to the given towers, e.g. `text_model.encoder.layers.0.self_attn.q_proj`."""
    prefixes = "|".join(TOWERS[t] for t in towers)
    names = "|".join(re.escape(m) for m in modules)
    return rf"(?:{prefixes})\..*\.(?:{names})"


def _add_lora(model, s: dict):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=s["r"], lora_alpha=s["lora_alpha"], target_modules=target_regex(s["towers"], s["target_modules"]),
                     lora_dropout=s["lora_dropout"], bias=s["bias"])
    try:
        with warnings.catch_warnings():  # transformers' deprecation notice for a call inside peft, not ours
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, cfg)
    except ValueError as e:
        raise VlmbiasError(f"no module named {s['target_modules']} in the {s['towers']} tower(s) of the base model: "
                           f"{str(e).splitlines()[0][:200]}") from None
    names = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    for t in s["towers"]:
        if not any(f".{TOWERS[t]}." in n for n in names):
            raise VlmbiasError(f"target_modules {s['target_modules']} match no module of the {t} tower")
    return peft_model


def _tokenize(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    toks = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return {"input_ids": toks["input_ids"], "attention_mask": toks["attention_mask"]}


def _encode_text(model, toks: dict[str, torch.Tensor], idx: torch.Tensor, device: str) -> torch.Tensor:
    mask = toks["attention_mask"][idx]
    width = int(mask.sum(1).max())  # right padding: trim columns no row of this batch uses
    return features(model.get_text_features(input_ids=toks["input_ids"][idx, :width].to(device),
                                             attention_mask=mask[:, :width].to(device)))


def _neutral_queries(df: pd.DataFrame, concepts: list[str], template: str | None) -> list[str]:
    if template:
        return [template.format(concept=c) for c in concepts]
    out = []
    for c in concepts:
        counts = df.loc[df["concept"] == c, "caption"].value_counts()
        out.append(sorted(counts[counts == counts.max()].index)[0])
    return out


def _adversary_inputs(image_emb: torch.Tensor, neutral_emb: torch.Tensor, scale) -> torch.Tensor:
    """What the adversary sees: the image's scaled cosine similarity to the neutral query of every
    concept in the set (`[batch, n_concepts]`), including its own concept's.

    Why similarities and not the joint (image or image+text) embedding: (1) retrieval ranks images
    by exactly these numbers, so "no adversary can read gender/race from them" is the property the
    audit measures (Berg et al. 2022 likewise let the adversary see image-query similarities);
    (2) with text-only adapters (the default) the image embedding cannot change, so an adversary
    on it could never be fooled and would send no gradient to the adapters, whereas the
    similarities depend on the text tower; (3) stripping demographics from the whole embedding
    removes far more than retrieval needs and costs accuracy. Using every concept's query (not
    only the image's own) keeps each query's ranking over *all* images free of the attribute,
    which is how the audit ranks a dataset of people with no profession labels.
    """
    return scale * F.normalize(image_emb, dim=-1) @ F.normalize(neutral_emb, dim=-1).T


# --------------------------------------------------------------------------- training

def finetune(base: str, table: pd.DataFrame, spec: dict, out_dir, threads: int = 2, *,
             device: str = "cpu", progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Train LoRA adapters on `base` with `spec` (see `DEFAULTS`); write them and losses.csv to
    `out_dir`. Images go through the image gate (`max_pixels`: config images.max_pixels). Returns the metadata written to vlmbias_finetune.json plus `steps`, `final_loss`
    and `losses` (the per-epoch DataFrame)."""
    s = resolve_spec(spec)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmbiasError(f"device {device!r} requested but CUDA is not available")
    df, classes = check_table(table, s)
    with deterministic(threads, warn_only=True):
        model, losses, steps = _train(base, df, classes, s, device, progress, max_pixels)
        return _save(model, (losses, steps), base, s, df, Path(out_dir))


class _Objective:
    """One objective's forward pass on a batch of row indices: `step(idx)` -> {"loss", components}.
    Frozen towers are encoded once, before the adapters exist (the base weights are what they stay)."""

    def __init__(self, model, tokenizer, processor, df: pd.DataFrame, classes: dict, s: dict, device: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.model, self.s, self.device, self.obj = model, s, device, s["objective"]
        captions = sorted(df["caption"].unique())
        cap_index = {c: i for i, c in enumerate(captions)}
        self.cap_of_row = torch.tensor([cap_index[c] for c in df["caption"]])
        self.cap_toks = _tokenize(tokenizer, captions)
        self.concepts = sorted(df["concept"].unique()) if "concept" in df else []
        self.neutral_toks = (_tokenize(tokenizer, _neutral_queries(df, self.concepts, s["neutral_template"]))
                             if self.obj == "adversarial" else None)
        self.pixels = self.image_cache = self.caption_cache = self.neutral_cache = None
        if self.obj != "thesis":
            self.pixels = load_pixels(df["path"].tolist(), processor, ids=df["image_id"].tolist(), what="fine-tuning",
                                      max_pixels=max_pixels)
            with torch.no_grad():
                if "vision" not in s["towers"]:
                    self.image_cache = torch.cat([self._image_features(torch.arange(i, min(i + 64, len(df))))
                                                  for i in range(0, len(df), 64)])
                if "text" not in s["towers"]:
                    self.caption_cache = _encode_text(model, self.cap_toks, torch.arange(len(captions)), device)
                    if self.neutral_toks is not None:
                        self.neutral_cache = self._neutral()
        self.heads, self.labels, self.weights = torch.nn.ModuleDict(), {}, {}
        self.scale = None  # the adapted model's logit scale, set once the adapters exist

    def add_heads(self, df: pd.DataFrame, classes: dict) -> None:
        """Thesis: linear heads on the text embedding; adversarial: one adversary per attribute.
        Created after the adapters, so the seeded initialisation order is fixed."""
        s, dim = self.s, self.model.config.projection_dim
        if self.obj == "thesis":
            for a, key in (("gender", "gender"), ("race", "race"), ("concept", "profession")):
                self.heads[key] = torch.nn.Linear(dim, len(classes[a]))
                self._labels(key, df[a], classes[a])
            self.heads["age"] = torch.nn.Linear(dim, 1)
            self.labels["age"] = torch.tensor(df["age_target"].to_numpy(), dtype=torch.float32)
        elif self.obj == "adversarial":
            for a in s["adv_attributes"]:
                self.heads[a] = torch.nn.Sequential(torch.nn.Linear(len(self.concepts), s["adv_hidden"]),
                                                    torch.nn.ReLU(), torch.nn.Linear(s["adv_hidden"], len(classes[a])))
                self._labels(a, df[a], classes[a])
        self.heads.to(self.device).train()

    def _labels(self, key: str, values: pd.Series, classes: list[str]) -> None:
        self.labels[key] = torch.tensor([classes.index(v) for v in values])
        self.weights[key] = inverse_frequency_weights(values, classes).to(self.device)

    def _ce(self, key: str, x: torch.Tensor, idx) -> torch.Tensor:
        return F.cross_entropy(self.heads[key](x), self.labels[key][idx].to(self.device), weight=self.weights[key])

    def _image_features(self, idx) -> torch.Tensor:
        return features(self.model.get_image_features(pixel_values=self.pixels[idx].to(self.device)))

    def _neutral(self) -> torch.Tensor:
        return _encode_text(self.model, self.neutral_toks, torch.arange(len(self.concepts)), self.device)

    def images(self, idx) -> torch.Tensor:
        return self.image_cache[idx] if self.image_cache is not None else self._image_features(idx)

    def texts(self, idx) -> torch.Tensor:
        rows = self.cap_of_row[idx]
        if self.caption_cache is not None:
            return self.caption_cache[rows]
        return _encode_text(self.model, self.cap_toks, rows, self.device)

    def step(self, idx) -> dict[str, torch.Tensor]:
        if self.obj == "thesis":
            emb = self.texts(idx)
            comp = {"gender": self._ce("gender", emb, idx), "race": self._ce("race", emb, idx),
                    "age": F.mse_loss(self.heads["age"](emb).squeeze(-1), self.labels["age"][idx].to(self.device)),
                    "profession": self._ce("profession", emb, idx)}
            total = comp["gender"] + comp["race"] + self.s["age_weight"] * comp["age"] + comp["profession"]
            return {"loss": total, **comp}
        img = self.images(idx)
        comp = {"contrastive": contrastive_loss(img, self.texts(idx), self.scale, self.cap_of_row[idx].to(self.device))}
        total = comp["contrastive"]
        if self.obj == "adversarial":
            neutral = self.neutral_cache if self.neutral_cache is not None else self._neutral()
            x = grad_reverse(_adversary_inputs(img, neutral, self.scale), self.s["adv_weight"])
            for a in self.s["adv_attributes"]:
                comp[f"adv_{a}"] = self._ce(a, x, idx)
                total = total + comp[f"adv_{a}"]
        return {"loss": total, **comp}


def _train(base: str, df: pd.DataFrame, classes: dict, s: dict, device: str, progress: bool,
           max_pixels: int = DEFAULT_MAX_PIXELS):
    model, tokenizer, processor = load_base(base)
    model.to(device).eval()
    objective = _Objective(model, tokenizer, processor, df, classes, s, device, max_pixels)
    torch.manual_seed(s["seed"])
    objective.model = model = _add_lora(model, s)
    model.train()
    objective.add_heads(df, classes)
    objective.scale = model.logit_scale.exp().detach()

    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if len(objective.heads):
        groups.append({"params": list(objective.heads.parameters()), "lr": s["head_lr"] or s["lr"]})
    opt = torch.optim.AdamW(groups, lr=s["lr"], weight_decay=s["weight_decay"])
    loader, total_steps = shuffled_batches(len(df), s["batch_size"], s["seed"], s["epochs"], s["max_steps"])
    log.info("fine-tuning %s (%s objective, adapters on %s): %d rows, %d steps", base, s["objective"], s["towers"],
             len(df), total_steps)
    losses, steps = train_steps(objective.step, lambda epoch: loader, opt, epochs=s["epochs"], total_steps=total_steps,
                                desc=f"finetune {s['objective']}", progress=progress)
    return model, losses, steps


def _save(model, losses_done, base: str, s: dict, df: pd.DataFrame, out_dir: Path) -> dict:
    losses, steps = losses_done
    meta = {"towers": s["towers"], "objective": s["objective"], "base": str(base), "spec": s,
            "image_embeddings_unchanged": s["towers"] == ["text"], "n_train": int(len(df)),
            "steps": int(steps), "vlmbias_version": __version__}
    save_trained(out_dir, lambda folder: model.save_pretrained(str(folder)), losses, "vlmbias_finetune.json",
                 meta)
    log.info("wrote adapter to %s (%d steps, final loss %.4f)", out_dir, steps, losses["loss"].iloc[-1])
    return {**meta, "out_dir": str(out_dir), "final_loss": float(losses["loss"].iloc[-1]), "losses": losses}


# --------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="CLIPModel hub id or local directory")
    p.add_argument("--train", required=True, help="fine-tuning table (.parquet or .csv)")
    p.add_argument("--spec-json", default="{}", help="fine-tuning spec as a JSON object")
    p.add_argument("--out", required=True, help="adapter output directory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps (overrides the spec)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    a = p.parse_args(argv)
    spec = parse_json_arg(a.spec_json, "--spec-json")
    if a.max_steps is not None:
        spec["max_steps"] = a.max_steps
    train = Path(a.train)
    if not train.is_file():
        raise VlmbiasError(f"fine-tuning table not found: {train}")
    if train.suffix not in (".parquet", ".csv"):
        raise VlmbiasError(f"fine-tuning table {train} must be .parquet or .csv")
    finetune(a.base, read_table(train), spec, a.out, threads=a.threads, device=a.device, progress=not a.no_progress,
             max_pixels=a.max_pixels)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
