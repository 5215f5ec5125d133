"""A tiny CLIP trained offline on the calibration world (see `vlmbias.world.generate`).

Two pieces, both saved in the formats the hub uses, so every later stage (embedding, LoRA with peft on
`q_proj`/`v_proj`, the audit) loads the result exactly like `openai/clip-vit-base-patch32`:
- a CLIP byte-level BPE tokenizer (vocab.json + merges.txt, and the tokenizer.json transformers writes):
  vocab = the 256 byte symbols, the same with `</w>`, the learned merges, `<|startoftext|>`,
  `<|endoftext|>`. The merges are learned here from the corpus captions and the concept/group names,
  so Chinese and Arabic work through bytes like in CLIP.
- a small `CLIPModel` (ViT vision tower + text transformer) trained with the symmetric contrastive
  loss on the world's train split, seeded and deterministic on CPU, saved with `save_pretrained`
  (safetensors) next to a `preprocessor_config.json` whose size/mean/std match training.

The training spec is the `world.model` block (keys in MODEL_DEFAULTS); `train_world_model` also accepts
the whole `world` block and then takes the seed from it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vlmbias import VlmbiasError
from vlmbias.encoders.models import features
from vlmbias.imagegate import DEFAULT_MAX_PIXELS, open_image
from vlmbias.io import run_cli, temp_dir_beside
from vlmbias.training import contrastive_loss, deterministic, load_pixels, train_steps
from vlmbias.world.tokenizer import build_tokenizer, check_round_trip

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_DEFAULTS: dict = {
    "seed": None,            # None: the world's seed
    "epochs": 30,
    "batch_size": 256,
    "lr": 1.0e-3,
    "weight_decay": 0.1,
    "warmup_steps": 50,
    "max_steps": None,       # cap on optimiser steps (tests); None: epochs decide
    "threads": None,         # torch threads; None: the config's top-level `threads` (the CLI's --threads)
    "bpe_merges": 400,
    "max_length": 32,        # text context length = max_position_embeddings
    "projection_dim": 64,
    "logit_scale_init": 14.3,  # initial 1/temperature (CLIP: 1/0.07); learnable, clamped at 100
    "vision": {"patch_size": 8, "hidden_size": 64, "layers": 2, "heads": 4, "intermediate_size": 256},
    "text": {"hidden_size": 64, "layers": 2, "heads": 4, "intermediate_size": 256},
    # Which captions in a batch count as positives of one another: "caption" = identical text;
    # "meaning" = the same concept in the same language, or the same named group in the same
    # language (paraphrases, which a web-scale corpus would teach by repetition). "none" = plain CLIP.
    "positives": "meaning",
    "augment_shift": 1,      # random translation (pixels) per image and step
    "augment_noise": 0.03,   # extra pixel noise (0..1 scale) per image and step
}
TEXT_CHUNKS = 4  # length-sorted runs per batch in the text tower (measured: 2 -> 31%, 4 -> 38%, 8 -> 24% faster)


# ------------------------------------------------------------------------------------------- training

def resolve_model_spec(spec: dict | None) -> dict:
    spec = deepcopy(spec or {})
    if "world" in spec and isinstance(spec["world"], dict):
        spec = spec["world"]
    world_seed = spec.get("seed", 0)
    if "model" in spec or "concepts" in spec:  # the whole world block
        spec = deepcopy(spec.get("model") or {})
        spec.setdefault("seed", None)
        if spec["seed"] is None:
            spec["seed"] = world_seed
    unknown = sorted(set(spec) - set(MODEL_DEFAULTS))
    if unknown:
        raise VlmbiasError(f"world.model: unknown key(s) {unknown}; known keys: {sorted(MODEL_DEFAULTS)}")
    out = {**deepcopy(MODEL_DEFAULTS), **spec}
    for tower in ("vision", "text"):
        extra = sorted(set(spec.get(tower) or {}) - set(MODEL_DEFAULTS[tower]))
        if extra:
            raise VlmbiasError(f"world.model.{tower}: unknown key(s) {extra}")
        out[tower] = {**MODEL_DEFAULTS[tower], **(spec.get(tower) or {})}
    return out


def _clip_config(m: dict, vocab_size: int, bos: int, eos: int, image_size: int):
    from transformers import CLIPConfig

    v, t = m["vision"], m["text"]
    if image_size % v["patch_size"]:
        raise VlmbiasError(f"image_size {image_size} is not a multiple of patch_size {v['patch_size']}")
    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
                         num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                         max_position_embeddings=m["max_length"], projection_dim=m["projection_dim"],
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=image_size, patch_size=v["patch_size"], hidden_size=v["hidden_size"],
                           intermediate_size=v["intermediate_size"], num_hidden_layers=v["layers"],
                           num_attention_heads=v["heads"], projection_dim=m["projection_dim"], num_channels=3),
        projection_dim=m["projection_dim"],
        logit_scale_init_value=float(np.log(m["logit_scale_init"])),
    )


def _image_processor(size: int, mean: list[float], std: list[float]):
    from transformers import CLIPImageProcessor

    # resize/crop to the native size are no-ops on world images and make other images fit
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              do_resize=True, do_center_crop=True, image_mean=mean, image_std=std)


def _positive_keys(corpus: pd.DataFrame, mode: str) -> pd.Series:
    """Equal keys = positives of one another in the contrastive targets."""
    if mode not in ("caption", "meaning", "none"):
        raise VlmbiasError(f"world.model.positives must be caption, meaning or none, not {mode!r}")
    if mode != "meaning":
        return corpus["caption"]
    concept = corpus["concept"].fillna("")
    names = corpus["names"].fillna("") if "names" in corpus else pd.Series("", index=corpus.index)
    key = np.where(concept != "", "c:" + concept + "|" + corpus["lang"],
                   np.where(names != "", "g:" + names + "|" + corpus["lang"], "t:" + corpus["caption"]))
    return pd.Series(key, index=corpus.index)


def _augment(x: torch.Tensor, shift: int, noise: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fresh small shifts and noise every step. Why: dozens of epochs over a few thousand images
    would otherwise teach the model to memorise which image carried which paraphrase."""
    if shift > 0:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (shift,) * 4, mode="replicate")
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if torch.is_tensor(noise) or noise > 0:
        x = x + torch.randn(x.shape, generator=gen) * noise
    return x


def _pixel_stats(paths: list[str], n: int = 512,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of (a fixed subset of) the training images, rounded for a readable config."""
    imgs = []
    for p in paths[:n]:
        try:
            imgs.append(np.asarray(open_image(p, max_pixels), np.float32) / 255)
        except Exception as e:  # name the file: the gate's and PIL's messages do not
            raise VlmbiasError(f"world image {p}: {type(e).__name__}: {e}") from None
    arr = np.stack(imgs)
    return ([round(float(x), 4) for x in arr.mean((0, 1, 2))], [round(float(x), 4) for x in arr.std((0, 1, 2))])


def _optimiser(model, m: dict, total: int):
    """AdamW with CLIP's betas (no weight decay on gains, biases and embeddings), linear warm-up then cosine."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": m["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=m["lr"], betas=(0.9, 0.98), eps=1e-6)
    warm = min(int(m["warmup_steps"]), max(1, total // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, total - warm))))
    return opt, sched


def text_features_by_length(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor,
                            idx: torch.Tensor, chunks: int = TEXT_CHUNKS) -> torch.Tensor:
    """Text features of rows `idx` (right-padded captions of `lengths` tokens), in `idx` order, computed in
    `chunks` runs of similar length, each padded only to its own longest caption. The causal and padding
    masks make this the same as padding all to the batch's longest (up to float rounding), so the batch
    and its negatives are unchanged while the text tower does less work: captions average 7 tokens, a
    batch's longest about 20."""
    order = torch.argsort(lengths[idx], stable=True)
    parts = []
    for run in torch.tensor_split(order, min(chunks, len(order))):
        rows = idx[run]
        width = int(lengths[rows].max())
        parts.append(features(model.get_text_features(input_ids=input_ids[rows, :width],
                                                      attention_mask=attention_mask[rows, :width])))
    return torch.cat(parts)[torch.argsort(order)]


def train_world_model(world_dir: str | os.PathLike, spec: dict | None, out_dir: str | os.PathLike,
                      threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Train the tiny CLIP on the world's train split and save a hub-style model directory. `threads`
    (else the spec's `threads`, else torch's default) also fixes the floating-point reduction order."""
    m = resolve_model_spec(spec)
    threads = threads or m["threads"]
    world_dir, out_dir = Path(world_dir).resolve(), Path(out_dir)
    world_spec = json.loads((world_dir / "world_spec.json").read_text(encoding="utf-8"))
    if m["seed"] is None:  # the model block alone was given: inherit the world's seed
        m["seed"] = int(world_spec["seed"])
    corpus = pd.read_parquet(world_dir / "corpus.parquet")
    train = corpus[corpus["split"] == "train"].reset_index(drop=True)
    if train.empty:
        raise VlmbiasError(f"{world_dir}: the corpus has no train split")
    names = pd.read_csv(world_dir / "concepts.csv", dtype=str, keep_default_na=False)["name"].tolist()

    tmp = temp_dir_beside(out_dir)
    try:
        with deterministic(int(threads) if threads else None):
            torch.manual_seed(m["seed"])
            info = _train(world_dir, world_spec, train, corpus, names, m, tmp, max_pixels)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        log.info("trained %d steps on %d images in %.1f s", info["steps"], info["train_images"], info["seconds"])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _train(world_dir: Path, world_spec: dict, train: pd.DataFrame, corpus: pd.DataFrame, names: list[str],
           m: dict, tmp: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    from transformers import CLIPModel

    t0 = time.perf_counter()
    tok = build_tokenizer(corpus["caption"].tolist() + names, tmp, m["bpe_merges"], m["max_length"])
    check_round_trip(tok, sorted(set(train["caption"]))[:200] + names)
    enc = tok(train["caption"].tolist(), padding="max_length", truncation=True, max_length=m["max_length"],
              return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    n_trunc = int((enc["attention_mask"][:, -1] == 1).sum())
    if n_trunc:
        log.warning("%d captions reach max_length %d and may be truncated", n_trunc, m["max_length"])
    size = int(world_spec["image_size"])
    paths = [str(world_dir / p) for p in train["path"]]
    mean, std = _pixel_stats(paths, max_pixels=max_pixels)
    processor = _image_processor(size, mean, std)
    pixels = load_pixels(paths, processor, chunk=512, what="world", progress=True, max_pixels=max_pixels)
    groups = (torch.as_tensor(pd.factorize(_positive_keys(train, m["positives"]))[0])
              if m["positives"] != "none" else None)

    config = _clip_config(m, len(tok), tok.bos_token_id, tok.eos_token_id, size)
    # plain attention: with 17 image and <= 32 text tokens, SDPA's fused CPU kernel costs more than
    # it saves (measured: about 10% faster training); loading for the audit keeps the library default
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = "eager"
    model = CLIPModel(config)
    n, bs = len(train), min(int(m["batch_size"]), len(train))
    steps_per_epoch = max(1, n // bs)  # drop the ragged last batch: a tiny batch is a noisy contrastive task
    total = steps_per_epoch * int(m["epochs"])
    if m["max_steps"]:
        total = min(total, int(m["max_steps"]))
    opt, sched = _optimiser(model, m, total)
    gen = torch.Generator().manual_seed(m["seed"])
    noise = m["augment_noise"] / torch.tensor(std).view(1, 3, 1, 1)

    def batches(epoch):
        perm = torch.randperm(n, generator=gen)
        return (perm[b * bs:(b + 1) * bs] for b in range(steps_per_epoch))

    def step(idx):
        px = _augment(pixels[idx], m["augment_shift"], noise, gen)
        img = features(model.get_image_features(pixel_values=px))
        txt = text_features_by_length(model, enc["input_ids"], enc["attention_mask"], lengths, idx)
        return {"loss": contrastive_loss(txt, img, model.logit_scale.exp(), None if groups is None else groups[idx])}

    def clamp_temperature():
        with torch.no_grad():  # CLIP's clamp: temperature no sharper than 1/100
            model.logit_scale.clamp_(0, np.log(100))

    model.train()
    losses, steps = train_steps(step, batches, opt, epochs=int(m["epochs"]), total_steps=total,
                                params=list(model.parameters()), clip_grad=1.0, scheduler=sched,
                                after_step=clamp_temperature, desc="world CLIP")
    model.eval()
    model.save_pretrained(str(tmp))  # safetensors
    processor.save_pretrained(str(tmp))
    losses.to_csv(tmp / "train_log.csv", index=False)
    info = {"spec": m, "world": str(world_dir), "train_images": n, "steps": steps, "image_mean": mean,
            "image_std": std, "seconds": round(time.perf_counter() - t0, 1)}
    (tmp / "world_model.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.world.model", description="Train the world's tiny CLIP.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--world", required=True, help="a directory written by `python -m vlmbias.world.generate generate`")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--spec-json", help="the `world.model` block (or the whole `world` block) as JSON")
    src.add_argument("--spec", help="a YAML file with a `world:` block")
    t.add_argument("--out", required=True)
    t.add_argument("--threads", type=int, help="torch threads (default: the spec's threads, else torch's default)")
    t.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    a = p.parse_args(argv)
    if a.spec_json:
        from vlmbias.io import parse_json_arg
        spec = parse_json_arg(a.spec_json, "--spec-json")
    elif a.spec:
        import yaml
        with open(a.spec, encoding="utf-8") as f:
            spec = yaml.safe_load(f) or {}
    else:
        spec = {}
    train_world_model(a.world, spec, a.out, a.threads, a.max_pixels)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
