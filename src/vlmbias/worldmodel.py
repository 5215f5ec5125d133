"""A tiny CLIP trained offline on the calibration world (see `vlmbias.world`).

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
import tempfile
import time
from collections import Counter
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from vlmbias import VlmbiasError
from vlmbias.io import run_cli

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

MODEL_DEFAULTS: dict = {
    "seed": None,            # None: the world's seed
    "epochs": 30,
    "batch_size": 256,
    "lr": 1.0e-3,
    "weight_decay": 0.1,
    "warmup_steps": 50,
    "max_steps": None,       # cap on optimiser steps (tests); None: epochs decide
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


# ------------------------------------------------------------------------------------------ tokenizer

def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 bytes onto printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _write_tokenizer_files(directory: Path, merges: list[tuple[str, str]]) -> None:
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols]
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:  # two merge paths can spell the same token; keep one id
            vocab.append(a + b)
            seen.add(a + b)
    vocab += [BOS, EOS]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                          encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                          encoding="utf-8")


def _load_tokenizer(directory: Path, max_length: int):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=max_length)


def learn_bpe(texts: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE on word frequencies. Words come from the CLIP tokenizer's own normaliser and
    pre-tokeniser (lower-case, CLIP's regex, byte-level symbols), so the merges fit it exactly."""
    with tempfile.TemporaryDirectory() as d:
        _write_tokenizer_files(Path(d), [])
        backend = _load_tokenizer(Path(d), 77).backend_tokenizer
    freq: Counter = Counter()
    for t in texts:
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(t)):
            freq[piece] += 1
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in freq.items() if w}
    to_byte = {ch: b for b, ch in enumerate(_byte_symbols())}
    allowed: dict[tuple[str, str], bool] = {}

    def ok(pair: tuple[str, str]) -> bool:
        # At most one multi-byte (non-ASCII) character per token. Chinese has no spaces, so a whole
        # caption is one pre-token and plain BPE learns "一位音乐家" and "音乐家的照片" as unrelated
        # tokens, each seen a few dozen times; per-character tokens are shared by every wording.
        if pair not in allowed:
            raw = [to_byte[ch] for ch in (pair[0] + pair[1]).replace("</w>", "")]
            ascii_only = all(b < 0x80 for b in raw)
            # otherwise: one character's bytes (a lead byte only in front, no ASCII mixed in)
            one_char = all(b >= 0x80 for b in raw) and all(b < 0xC0 for b in raw[1:])
            allowed[pair] = ascii_only or one_char
        return allowed[pair]

    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            for p in zip(w, w[1:]):
                if ok(p):
                    pairs[p] += n
        if not pairs:
            break
        # most frequent; ties broken by the pair itself, so the merges are deterministic
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        joined = best[0] + best[1]
        new = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + n
        words = new
    return merges


def build_tokenizer(texts: list[str], out_dir: str | os.PathLike, n_merges: int = 400, max_length: int = 32):
    """Learn merges, write vocab.json/merges.txt, and save the transformers tokenizer files beside them."""
    out_dir = Path(out_dir)
    _write_tokenizer_files(out_dir, learn_bpe(texts, n_merges))
    tok = _load_tokenizer(out_dir, max_length)
    tok.save_pretrained(str(out_dir))
    return tok


def check_round_trip(tok, texts: list[str]) -> None:
    """CLIP's tokenizer lower-cases and re-spaces punctuation; compare what must survive."""
    for t in texts:
        back = tok.decode(tok(t)["input_ids"], skip_special_tokens=True)
        if "".join(back.split()) != "".join(t.lower().split()):
            raise VlmbiasError(f"tokenizer does not round-trip {t!r} (got {back!r})")


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


def _load_pixels(paths: list[str], processor, batch: int = 512) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(paths), batch), desc="load images", unit="batch", mininterval=2):
        imgs = []
        for p in paths[i:i + batch]:
            with Image.open(p) as im:
                imgs.append(im.convert("RGB"))
        out.append(processor(images=imgs, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


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


def _pixel_stats(paths: list[str], n: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of (a fixed subset of) the training images, rounded for a readable config."""
    arr = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in paths[:n]])
    return ([round(float(x), 4) for x in arr.mean((0, 1, 2))], [round(float(x), 4) for x in arr.std((0, 1, 2))])


def train_world_model(world_dir: str | os.PathLike, spec: dict | None, out_dir: str | os.PathLike,
                      threads: int = 2) -> None:
    """Train the tiny CLIP on the world's train split and save a hub-style model directory."""
    from transformers import CLIPModel

    m = resolve_model_spec(spec)
    world_dir, out_dir = Path(world_dir).resolve(), Path(out_dir)
    world_spec = json.loads((world_dir / "world_spec.json").read_text(encoding="utf-8"))
    if m["seed"] is None:  # the model block alone was given: inherit the world's seed
        m["seed"] = int(world_spec["seed"])
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(m["seed"])
    torch.use_deterministic_algorithms(True)

    corpus = pd.read_parquet(world_dir / "corpus.parquet")
    train = corpus[corpus["split"] == "train"].reset_index(drop=True)
    if train.empty:
        raise VlmbiasError(f"{world_dir}: the corpus has no train split")
    names = pd.read_csv(world_dir / "concepts.csv", dtype=str, keep_default_na=False)["name"].tolist()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
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
        mean, std = _pixel_stats(paths)
        processor = _image_processor(size, mean, std)
        pixels = _load_pixels(paths, processor)
        cap_id = torch.as_tensor(pd.factorize(_positive_keys(train, m["positives"]))[0])

        config = _clip_config(m, len(tok), tok.bos_token_id, tok.eos_token_id, size)
        model = CLIPModel(config)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": m["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=m["lr"], betas=(0.9, 0.98), eps=1e-6)
        n, bs = len(train), min(int(m["batch_size"]), len(train))
        steps_per_epoch = max(1, n // bs)  # drop the ragged last batch: a tiny batch is a noisy contrastive task
        total = steps_per_epoch * int(m["epochs"])
        if m["max_steps"]:
            total = min(total, int(m["max_steps"]))
        warm = min(int(m["warmup_steps"]), max(1, total // 10))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, total - warm))))
        gen = torch.Generator().manual_seed(m["seed"])
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        log_rows, step = [], 0
        model.train()
        bar = tqdm(total=total, desc="train", unit="step", mininterval=2)
        for epoch in range(1, int(m["epochs"]) + 1):
            if step >= total:
                break
            e0, losses = time.perf_counter(), []
            perm = torch.randperm(n, generator=gen)
            for b in range(steps_per_epoch):
                if step >= total:
                    break
                idx = perm[b * bs:(b + 1) * bs]
                width = int(lengths[idx].max())  # pad to the batch's longest caption, not max_length
                px = _augment(pixels[idx], m["augment_shift"], m["augment_noise"] / std_t, gen)
                img = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=px)), dim=-1)
                txt = torch.nn.functional.normalize(_features(model.get_text_features(
                    input_ids=enc["input_ids"][idx, :width], attention_mask=enc["attention_mask"][idx, :width])), dim=-1)
                logits = model.logit_scale.exp() * txt @ img.T
                if m["positives"] != "none":
                    same = (cap_id[idx][:, None] == cap_id[idx][None, :]).float()
                    target = same / same.sum(1, keepdim=True)
                else:
                    target = torch.eye(len(idx))
                loss = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                              + torch.nn.functional.cross_entropy(logits.T, target))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                with torch.no_grad():  # CLIP's clamp: temperature no sharper than 1/100
                    model.logit_scale.clamp_(0, np.log(100))
                losses.append(float(loss.detach()))
                step += 1
                bar.update(1)
            log_rows.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                             "seconds": round(time.perf_counter() - e0, 3)})
            bar.set_postfix(loss=f"{log_rows[-1]['loss']:.3f}")
        bar.close()
        model.eval()
        model.save_pretrained(str(tmp))  # safetensors
        processor.save_pretrained(str(tmp))
        pd.DataFrame(log_rows, columns=["epoch", "loss", "seconds"]).to_csv(tmp / "train_log.csv", index=False)
        (tmp / "world_model.json").write_text(json.dumps({"spec": m, "world": str(world_dir), "train_images": n,
                                                          "steps": step, "image_mean": mean, "image_std": std,
                                                          "seconds": round(time.perf_counter() - t0, 1)},
                                                         indent=1) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        log.info("trained %d steps on %d images in %.1f s; final loss %.3f", step, n, time.perf_counter() - t0,
                 log_rows[-1]["loss"] if log_rows else float("nan"))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.worldmodel", description="Train the world's tiny CLIP.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--world", required=True, help="a directory written by `python -m vlmbias.world generate`")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--spec-json", help="the `world.model` block (or the whole `world` block) as JSON")
    src.add_argument("--spec", help="a YAML file with a `world:` block")
    t.add_argument("--out", required=True)
    t.add_argument("--threads", type=int, default=2)
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
    train_world_model(a.world, spec, a.out, a.threads)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
