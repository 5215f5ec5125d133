"""Berg et al. 2022's learned prompt array ("A Prompt Array Keeps the Bias Away: Debiasing
Vision-Language Models with Adversarial Learning", AACL 2022) for a transformers `CLIPModel`.

A few learnable token embeddings are prepended to every text query inside the text encoder; the
model itself stays frozen, so only the prompt vectors (and the adversary) learn, and image
embeddings do not change. Training is adversarial: an adversary reads the scaled cosine
similarities of a batch of images to a set of neutral queries (encoded *with* the prompts) and
predicts each image's attribute class; the prompts are trained to fool it (gradient reversal,
Ganin & Lempitsky 2015, as in `finetune.py`'s adversarial objective: one backward pass, the
adversary minimises its cross-entropy, the prompts get minus `adv_weight` times its gradient;
the paper alternates adversary and prompt steps instead), plus CLIP's image-caption contrastive
loss (`training.contrastive_loss`) on the captions, encoded with the prompts, to keep retrieval
quality: loss = contrastive_weight * contrastive + sum over attributes of the adversary's CE.

How the prepend works: transformers 5's `CLIPTextModel.forward` takes `input_ids` only (no
`inputs_embeds`; it needs the ids to find the end-of-text token it pools), so the ids are
extended by `n_tokens` placeholder ids in front (the tokenizer's start token, never the
end-of-text id) and a forward hook on the text embeddings module replaces the embedded sequence
by [prompt vectors, token + position embeddings of the real text]. As in the authors' released
code ("prepend" mode), the prompts come before the start token, get no position embedding, and
the text keeps the positions it would have without them; the pooled end-of-text token moves by
`n_tokens`, which the model finds from the extended ids. Texts are truncated to leave room for
the prompts within the model's position embeddings.

Defaults (`DEFAULTS`) and sources:
- `n_tokens` 2: the authors' released prompt arrays (`gender_2`, `race_2`).
- `init` "token0": each prompt starts as the embedding of token id 0, the released code's
  default ("zeros"); "random" draws N(0, 0.02).
- adversary: an MLP with 3 hidden layers of 32 units and ReLU (the released `Adversary`); its
  input here is `finetune`'s adversary input (the model's logit scale x cosine similarity of
  each image to every neutral query); the released code used (100 x cosine) / 20.
- `adv_queries` None: "a photo of a {concept}" for every concept of the table (the paper used
  "a photo of a {adjective} person" prompts; for this audit the neutral queries are concepts).
- lr, batch size, epochs, weights: this project's choices, not the paper's.

Output in `out_dir`: `prompts.safetensors` (tensor `prompts`, [n_tokens, text hidden size]),
`losses.csv`, and `prompt_array.json` (base, n_tokens, hidden size, spec, classes,
adversary queries, steps; `image_embeddings_unchanged: true`) written last.
`vlmbias.encoders.models.load_prompt_encoder(base, out_dir)` returns an `Encoder` whose `encode_texts`
prepends the prompts, so `audit.embed.embed_queries` works with it unchanged.
Runs are seeded and deterministic on CPU (same inputs, spec and threads: the same bytes).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from vlmbias import VlmbiasError, __version__
from vlmbias.encoders.models import features, load_hf_parts
from vlmbias.encoders.prompt_array import META, WEIGHTS, PromptedText, freeze
from vlmbias.mitigate.finetune import grad_reverse, inverse_frequency_weights
from vlmbias.training import (contrastive_loss, deterministic, is_number, load_pixels, save_trained, shuffled_batches,
                              train_steps)

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

INITS = ("token0", "random")
DEFAULTS: dict = {
    "n_tokens": 2,                 # authors' released arrays
    "init": "token0",              # authors' released default
    "adv_attributes": ["gender"],
    "adv_hidden": 32,              # released Adversary: 3 hidden layers of 32
    "adv_layers": 3,
    "adv_weight": 1.0,
    "contrastive_weight": 1.0,
    "adv_queries": None,           # list of texts; None = "a photo of a {concept}" per table concept
    "neutral_template": "a photo of a {concept}",
    "lr": 1e-3,
    "head_lr": None,               # adversary learning rate; None = lr
    "weight_decay": 0.0,
    "batch_size": 16,
    "epochs": 10,
    "max_steps": None,
    "seed": 0,
    "classes": {},                 # {attribute: [classes]}: fixes the class order
}


# --------------------------------------------------------------------------- spec & data


def resolve_spec(spec: dict | None) -> dict:
    """Defaults filled in and every key checked; errors name the key."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise VlmbiasError(f"unknown prompt-array spec key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **spec}
    for key in ("n_tokens", "adv_hidden", "adv_layers", "batch_size", "epochs"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1:
            raise VlmbiasError(f"prompt-array spec {key!r} must be an integer >= 1, got {s[key]!r}")
    if s["max_steps"] is not None and (not isinstance(s["max_steps"], int) or isinstance(s["max_steps"], bool)
                                       or s["max_steps"] < 1):
        raise VlmbiasError(f"prompt-array spec 'max_steps' must be null or an integer >= 1, got {s['max_steps']!r}")
    if not isinstance(s["seed"], int) or isinstance(s["seed"], bool):
        raise VlmbiasError(f"prompt-array spec 'seed' must be an integer, got {s['seed']!r}")
    if s["init"] not in INITS:
        raise VlmbiasError(f"prompt-array spec 'init' must be one of {list(INITS)}, got {s['init']!r}")
    if not is_number(s["lr"]) or s["lr"] <= 0:
        raise VlmbiasError(f"prompt-array spec 'lr' must be a positive number, got {s['lr']!r}")
    if s["head_lr"] is not None and (not is_number(s["head_lr"]) or s["head_lr"] <= 0):
        raise VlmbiasError(f"prompt-array spec 'head_lr' must be null or a positive number, got {s['head_lr']!r}")
    for key in ("adv_weight", "contrastive_weight", "weight_decay"):
        if not is_number(s[key]) or s[key] < 0:
            raise VlmbiasError(f"prompt-array spec {key!r} must be a number >= 0, got {s[key]!r}")
    attrs = [s["adv_attributes"]] if isinstance(s["adv_attributes"], str) else s["adv_attributes"]
    if (not isinstance(attrs, (list, tuple)) or not attrs or not all(isinstance(a, str) and a for a in attrs)
            or len(set(attrs)) != len(attrs)):
        raise VlmbiasError(f"prompt-array spec 'adv_attributes' must be a non-empty list of distinct column names, "
                           f"got {s['adv_attributes']!r}")
    s["adv_attributes"] = list(attrs)
    q = s["adv_queries"]
    if q is not None:
        if isinstance(q, str) or not isinstance(q, (list, tuple)) or not q or not all(isinstance(t, str) and t.strip()
                                                                                         for t in q):
            raise VlmbiasError(f"prompt-array spec 'adv_queries' must be null or a non-empty list of texts, got {q!r}")
        s["adv_queries"] = list(q)
    if not isinstance(s["neutral_template"], str) or "{concept}" not in s["neutral_template"]:
        raise VlmbiasError(f"prompt-array spec 'neutral_template' must contain '{{concept}}', got {s['neutral_template']!r}")
    if not isinstance(s["classes"], dict):
        raise VlmbiasError(f"prompt-array spec 'classes' must be a mapping {{attribute: [classes]}}, got {s['classes']!r}")
    return s


def check_table(table: pd.DataFrame, s: dict) -> tuple[pd.DataFrame, dict, list[str]]:
    """The training rows, the class list per adversary attribute, and the adversary's queries."""
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise VlmbiasError("the prompt-array training table is empty")
    need = ["image_id", "path", "caption", *s["adv_attributes"]] + (["concept"] if s["adv_queries"] is None else [])
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise VlmbiasError(f"the prompt-array training table lacks column(s) {missing}")
    df = table.reset_index(drop=True)
    bad = df[need].isna().any(axis=1) | (df["caption"].astype(str).str.strip() == "")
    if bad.any():
        raise VlmbiasError(f"{int(bad.sum())} training row(s) have an empty value in {need}, "
                           f"e.g. image {df.loc[bad, 'image_id'].iat[0]!r}")
    classes = {}
    for a in s["adv_attributes"]:
        present = sorted(df[a].astype(str).unique())
        listed = [str(c) for c in s["classes"].get(a, present)]
        unknown = sorted(set(present) - set(listed))
        if unknown:
            raise VlmbiasError(f"attribute {a!r} has class(es) {unknown} not in spec classes {listed}")
        if len(listed) < 2:
            raise VlmbiasError(f"attribute {a!r} has a single class {listed}; the adversary needs at least two")
        classes[a] = listed
        df[a] = df[a].astype(str)
    queries = s["adv_queries"] or [s["neutral_template"].format(concept=c) for c in sorted(df["concept"].astype(str).unique())]
    return df, classes, queries



def _init_prompts(model, s: dict, device: str) -> torch.Tensor:
    hidden = model.config.text_config.hidden_size
    if s["init"] == "token0":
        start = model.text_model.embeddings.token_embedding.weight[0].detach().cpu().repeat(s["n_tokens"], 1)
    else:
        start = torch.randn(s["n_tokens"], hidden) * 0.02  # drawn on the CPU: the same start on every device
    return torch.nn.Parameter(start.float().to(device))


def _adversary(n_in: int, n_out: int, hidden: int, layers: int) -> torch.nn.Module:
    mods, width = [], n_in
    for _ in range(layers):
        mods += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    return torch.nn.Sequential(*mods, torch.nn.Linear(width, n_out))


# --------------------------------------------------------------------------- training

def train_prompt_array(base: str, table: pd.DataFrame, spec: dict | None, out_dir, threads: int | None = 2, *,
                       device: str = "cpu", progress: bool = True, max_pixels: int | None = None) -> dict:
    """Learn a prompt array for the frozen CLIPModel `base` (hub id or directory).

    table: one row per training image: `image_id, path, caption`, the columns named by
    `adv_attributes` (e.g. `gender`), and `concept` unless spec `adv_queries` lists the
    adversary's queries. Writes `out_dir` (module docstring) and returns the metadata plus
    `out_dir`, `steps`, `final_loss` and `losses` (the per-epoch DataFrame).
    """
    s = resolve_spec(spec)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmbiasError(f"device {device!r} requested but CUDA is not available")
    df, classes, queries = check_table(table, s)
    with deterministic(threads, warn_only=True):
        # transformers' model: gradients flow through it to the prompts
        model, tokenizer, processor = load_hf_parts(str(base), torch.float32, "base model", native=False)
        model = freeze(model)
        model.to(device)
        torch.manual_seed(s["seed"])
        prompts = _init_prompts(model, s, device)
        text = PromptedText(model, tokenizer, prompts)
        gate = {} if max_pixels is None else {"max_pixels": max_pixels}  # images.max_pixels (the image gate)
        pixels = load_pixels(df["path"].tolist(), processor, ids=df["image_id"].tolist(), what="prompt-array training",
                             **gate)
        with torch.no_grad():
            images = torch.cat([features(model.get_image_features(pixel_values=pixels[i:i + 64].to(device)))
                                for i in range(0, len(df), 64)])
        captions = sorted(df["caption"].astype(str).unique())
        cap_of_row = torch.tensor(df["caption"].astype(str).map({c: i for i, c in enumerate(captions)}).to_numpy())
        cap_toks, query_toks = text.tokenize(captions), text.tokenize(queries)
        adversaries = torch.nn.ModuleDict({a: _adversary(len(queries), len(classes[a]), s["adv_hidden"], s["adv_layers"])
                                           for a in s["adv_attributes"]}).to(device).train()
        labels = {a: torch.tensor([classes[a].index(v) for v in df[a]]) for a in s["adv_attributes"]}
        weights = {a: inverse_frequency_weights(df[a], classes[a]).to(device) for a in s["adv_attributes"]}
        scale = model.logit_scale.exp().detach()

        def step(idx):
            img = images[idx]
            comp = {"contrastive": contrastive_loss(img, text.encode(cap_toks, cap_of_row[idx], device), scale,
                                                    cap_of_row[idx].to(device))}
            total = s["contrastive_weight"] * comp["contrastive"]
            neutral = text.encode(query_toks, device=device)
            x = grad_reverse(scale * F.normalize(img, dim=-1) @ F.normalize(neutral, dim=-1).T, s["adv_weight"])
            for a in s["adv_attributes"]:
                comp[f"adv_{a}"] = F.cross_entropy(adversaries[a](x), labels[a][idx].to(device), weight=weights[a])
                total = total + comp[f"adv_{a}"]
            return {"loss": total, **comp}

        opt = torch.optim.AdamW([{"params": [prompts]},
                                 {"params": list(adversaries.parameters()), "lr": s["head_lr"] or s["lr"]}],
                                lr=s["lr"], weight_decay=s["weight_decay"])
        loader, total_steps = shuffled_batches(len(df), s["batch_size"], s["seed"], s["epochs"], s["max_steps"])
        log.info("prompt array on %s: %d tokens, %d rows, %d steps", base, s["n_tokens"], len(df), total_steps)
        losses, steps = train_steps(step, lambda epoch: loader, opt, epochs=s["epochs"], total_steps=total_steps,
                                    desc="prompt array", progress=progress)
    meta = {"base": str(base), "n_tokens": s["n_tokens"], "hidden_size": int(prompts.shape[1]), "spec": s,
            "classes": classes, "adv_queries": queries, "n_train": len(df), "steps": int(steps),
            "image_embeddings_unchanged": True, "vlmbias_version": __version__}
    _save(prompts.detach().cpu(), losses, meta, Path(out_dir))
    final = float(losses["loss"].iloc[-1])
    log.info("wrote prompt array to %s (%d steps, final loss %.4f)", out_dir, steps, final)
    return {**meta, "out_dir": str(out_dir), "final_loss": final, "losses": losses}


def _save(prompts: torch.Tensor, losses: pd.DataFrame, meta: dict, out_dir: Path) -> None:
    from safetensors.torch import save_file

    save_trained(out_dir, lambda folder: save_file({"prompts": prompts.contiguous()}, str(folder / WEIGHTS)), losses,
                 META, meta)



def main(argv=None) -> None:
    """Rule `prompt_array_train`: learn the prompts on the balanced fine-tuning set (label stage), whose
    images come from the mitigation split's fitting concepts only (acquire excludes the held-out ones)."""
    import argparse

    from vlmbias.imagegate import DEFAULT_MAX_PIXELS, check_limit
    from vlmbias.io import parse_json_arg, read_table, run_cli  # noqa: F401

    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.prompt_array",
                                description="Learn a prompt array (Berg et al. 2022) for a CLIPModel.")
    p.add_argument("--base", required=True, help="the base CLIPModel (hub id or directory)")
    p.add_argument("--train", required=True, help="training table (balanced.parquet of the label stage)")
    p.add_argument("--spec-json", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    check_limit(a.max_pixels)
    train_prompt_array(a.base, read_table(a.train), parse_json_arg(a.spec_json, "--spec-json"), a.out, a.threads,
                       device=a.device, progress=False, max_pixels=a.max_pixels)


if __name__ == "__main__":
    from vlmbias.io import run_cli

    raise SystemExit(run_cli(main))
