"""Fine-tuning steps per second: the project's LoRA training against a plain thesis-style loop, same
model, same data, batch 4, fp32.

- pipeline: `vlmbias.mitigate.finetune.finetune` (LoRA r=16 on the text tower's q/v, AdamW,
  `vlmbias.training.train_steps`), objectives `contrastive` (images decoded once up front, the
  frozen image tower encoded once and cached) and `thesis` (heads on the text embedding; images
  never loaded). Steps/s is marginal (the call timed at S and 2S steps: S / the difference, so
  set-up and saving cancel) and over the whole call (loading, caching and saving included).
- thesis loop: the same LoRA on the same model, every step decodes and preprocesses its 4 images,
  runs both towers (`CLIPModel(..., return_loss=True)`), backward, AdamW step (timed after one
  warm-up step).

Models (offline): the world's trained tiny CLIP (`--world DIR` to reuse one, else built in a temp
dir), and a randomly initialised CLIP with ViT-B/32's dimensions (transformers' CLIPConfig
defaults: 224 px, patch 32, 12+12 layers) using the world's tokenizer.

    python benchmarks/finetune.py            # world (40 steps) + ViT-B/32-sized (8 steps)
    python benchmarks/finetune.py --steps 200 --vit-steps 30
    python benchmarks/finetune.py --quick
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import footer, header  # noqa: E402
from _world import build_world  # noqa: E402

from vlmbias.encoders.models import load_hf_parts  # noqa: E402
from vlmbias.imagegate import open_image  # noqa: E402
from vlmbias.mitigate.finetune import DEFAULTS, finetune, target_regex  # noqa: E402

BATCH = 4


def training_table(world_data: Path, n: int) -> pd.DataFrame:
    """n train-split corpus rows with a concept (the fine-tuning table's schema), seeded."""
    from vlmbias.world.generate import load_corpus

    c = load_corpus(world_data)
    c = c[(c["split"] == "train") & c["concept"].notna() & (c["lang"] == "en")]
    return c.sample(n=min(n, len(c)), random_state=0)[["image_id", "path", "caption", "concept", "gender", "race",
                                                       "age"]].reset_index(drop=True)


def vit_b32_sized(world_model: Path, dest: Path) -> Path:
    """A random CLIPModel with ViT-B/32's dimensions, the world's tokenizer, a 224 px processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    for f in world_model.iterdir():
        if f.name.startswith(("vocab", "merges", "tokenizer", "special")):
            shutil.copy(f, dest / f.name)
    torch.manual_seed(0)
    cfg = CLIPConfig()
    cfg.text_config.max_position_embeddings = 32
    CLIPModel(cfg).save_pretrained(str(dest))
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(str(dest))
    return dest


def thesis_loop(base: str, table: pd.DataFrame, steps: int) -> float:
    """Seconds for `steps` plain steps (after one warm-up step)."""
    from peft import LoraConfig, get_peft_model

    model, tok, proc = load_hf_parts(base, torch.float32, native=False)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=DEFAULTS["r"], lora_alpha=DEFAULTS["lora_alpha"],
                                             lora_dropout=DEFAULTS["lora_dropout"],
                                             target_modules=target_regex(["text"], DEFAULTS["target_modules"])))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=DEFAULTS["lr"])
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(0))

    def step(i):
        rows = table.iloc[order[(i * BATCH) % len(table):][:BATCH].tolist()]
        px = proc(images=[open_image(p) for p in rows["path"]], return_tensors="pt")["pixel_values"]
        t = tok(rows["caption"].tolist(), padding=True, truncation=True, return_tensors="pt")
        loss = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=px,
                     return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return time.perf_counter() - t0


def pipeline(base: str, table: pd.DataFrame, objective: str, steps: int, out: Path) -> tuple[float, float]:
    """(marginal steps/s, steps/s of the whole call): the call is timed with `steps` and `2 * steps`
    steps, and the difference is what `steps` more steps cost (set-up, caching, first-step warm-up
    and saving cancel out)."""
    walls = []
    for n in (steps, 2 * steps):
        t0 = time.perf_counter()
        res = finetune(base, table, {"objective": objective, "epochs": 1000, "max_steps": n, "batch_size": BATCH},
                       out / str(n), threads=torch.get_num_threads(), progress=False)
        walls.append(time.perf_counter() - t0)
        assert res["steps"] == n, res["steps"]
    return steps / (walls[1] - walls[0]), 2 * steps / walls[1]


def bench(title: str, base: str, table: pd.DataFrame, steps: int, tmp: Path) -> None:
    print(f"\n-- {title}: {len(table)} rows, batch {BATCH}, fp32, {steps} steps each", flush=True)
    t = thesis_loop(base, table, steps)
    r_thesis = steps / t
    print(f"{'thesis loop (decode per step, both towers)':46s} {r_thesis:7.2f} steps/s   1.00x", flush=True)
    for obj in ("contrastive", "thesis"):
        rate, wall_rate = pipeline(base, table, obj, steps, tmp / f"{title[:5]}-{obj}")
        print(f"{'pipeline LoRA, objective ' + obj:46s} {rate:7.2f} steps/s {rate / r_thesis:6.2f}x "
              f"(whole call of {2 * steps} steps incl. loading/caching/saving: {wall_rate:.2f} steps/s, "
              f"{wall_rate / r_thesis:.2f}x)",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", help="folder to build the world in, or reuse it from (default: a temp dir)")
    ap.add_argument("--steps", type=int, default=40, help="steps on the world model")
    ap.add_argument("--vit-steps", type=int, default=8, help="steps on the ViT-B/32-sized model (0: skip)")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.vit_steps, a.rows = 4, 0, 40
    info = header("fine-tuning steps/s vs a thesis-style loop", ceiling=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        w = build_world(a.world or tmp / "world", max_steps=20 if a.quick else None)
        table = training_table(w["data"], a.rows)
        bench("world tiny CLIP", str(w["model"]), table, a.steps, tmp)
        if a.vit_steps:
            (tmp / "vitb32").mkdir()
            bench("random CLIP, ViT-B/32 dimensions", str(vit_b32_sized(w["model"], tmp / "vitb32")), table,
                  a.vit_steps, tmp)
    footer(info)


if __name__ == "__main__":
    main()
