"""The training core shared by the world's CLIP (`vlmbias.world.model`) and the LoRA fine-tuning
(`vlmbias.mitigate.finetune`): pixel loading through the project's image gate, CLIP's symmetric
contrastive loss with soft targets, a deterministic-mode guard that restores torch's global
settings, and the seeded step loop that logs per-epoch losses. A fix here is a fix to both.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlmbias import VlmbiasError
from vlmbias.io import temp_dir_beside, write_table
from vlmbias.imagegate import DEFAULT_MAX_PIXELS, check_limit, open_image


def load_pixels(paths: list[str], processor, *, chunk: int = 64, ids: list | None = None, what: str = "training",
                progress: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Preprocessed pixel values of every image, in order, each through the image gate (at most
    `max_pixels` pixels). Every unreadable or refused image is named in one error."""
    check_limit(max_pixels)
    ids = list(ids) if ids is not None else list(paths)
    out, bad = [], []
    for start in tqdm(range(0, len(paths), chunk), desc="load images", unit="batch", mininterval=2,
                      disable=not progress):
        imgs = []
        for iid, path in zip(ids[start:start + chunk], paths[start:start + chunk]):
            try:
                imgs.append(open_image(path, max_pixels))
            except Exception as e:  # collected: the error below names every bad image, not just the first
                bad.append(f"{iid} ({path}: {type(e).__name__}: {e})")
        if not bad:
            out.append(processor(images=imgs, return_tensors="pt")["pixel_values"].float())
    if bad:
        raise VlmbiasError(f"{len(bad)} {what} image(s) cannot be read: {'; '.join(bad[:3])}")
    return torch.cat(out)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float,
                     groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE between the rows of `a` and `b` (normalised here). Rows with equal
    `groups` are all positives of one another (uniform soft targets); with all-distinct groups
    (or none) it is exactly CLIP's loss."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = scale * a @ b.T
    if groups is None:
        groups = torch.arange(len(a), device=a.device)
    same = (groups[:, None] == groups[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@contextmanager
def deterministic(threads: int | None, warn_only: bool = False):
    """Deterministic algorithms and a fixed thread count while training; torch's global settings
    are restored afterwards, so a caller in the same process is not left in deterministic mode."""
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise VlmbiasError(f"threads must be an integer >= 1, got {threads!r}")
    old_threads = torch.get_num_threads()
    old_det, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def save_trained(out_dir, write_weights: Callable[[Path], None], losses: pd.DataFrame, meta_name: str,
                 meta: dict) -> None:
    """Write a trained module's folder: weights (by `write_weights(folder)`), losses.csv and the
    metadata file, built beside `out_dir` and moved in with the metadata file LAST, so its presence
    marks a complete folder; an earlier metadata file is removed first, so a crash never leaves a
    stale one beside new weights."""
    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    try:
        write_weights(tmp)
        write_table(losses, tmp / "losses.csv")
        (tmp / meta_name).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / meta_name).unlink(missing_ok=True)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == meta_name):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_number(v) -> bool:
    """A finite int or float, not a bool: what every training spec's numeric keys must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def shuffled_batches(n: int, batch_size: int, seed: int, epochs: int, max_steps: int | None = None):
    """A seeded DataLoader over row indices (reshuffled every epoch, last batch ragged) and the
    number of optimiser steps: epochs x batches, capped at `max_steps`."""
    loader = torch.utils.data.DataLoader(torch.arange(n), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed), num_workers=0)
    total = epochs * len(loader)
    return loader, min(total, max_steps) if max_steps else total


def train_steps(step: Callable[[torch.Tensor], dict[str, torch.Tensor]], batches: Callable[[int], Iterable],
                opt: torch.optim.Optimizer, *, epochs: int, total_steps: int, params=None, clip_grad: float | None = None,
                scheduler=None, after_step: Callable[[], None] | None = None, desc: str = "train",
                progress: bool = True) -> tuple[pd.DataFrame, int]:
    """Run up to `total_steps` optimiser steps over `epochs`. `batches(epoch)` yields index tensors
    (drawn from the caller's seeded generator); `step(idx)` returns `{"loss": total, **components}`.
    Returns the per-epoch log (`epoch, step_count, loss, <components>, seconds`: means over the
    epoch's steps) and the number of steps taken. A non-finite loss stops training with an error."""
    rows, done = [], 0
    bar = tqdm(total=total_steps, desc=desc, unit="step", mininterval=2, disable=not progress)
    for epoch in range(1, epochs + 1):
        if done >= total_steps:
            break
        t0, sums, count = time.perf_counter(), defaultdict(float), 0
        for idx in batches(epoch):
            if done >= total_steps:
                break
            comp = step(idx)
            opt.zero_grad(set_to_none=True)
            comp["loss"].backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            opt.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step()
            done += 1
            count += 1
            for k, v in comp.items():
                sums[k] += float(v.detach())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{float(comp['loss'].detach()):.4f}", refresh=False)
        if count == 0:
            continue
        if not math.isfinite(sums["loss"]):
            raise VlmbiasError(f"the {desc} loss became {sums['loss']} in epoch {epoch}; lower the learning rate")
        rows.append({"epoch": epoch, "step_count": count, **{k: v / count for k, v in sums.items()},
                     "seconds": round(time.perf_counter() - t0, 3)})
    bar.close()
    losses = pd.DataFrame(rows, columns=["epoch", "step_count", "loss"] if not rows else None)
    rest = [c for c in losses.columns if c not in ("epoch", "step_count", "loss", "seconds")]
    return losses[["epoch", "step_count", "loss", *rest] + (["seconds"] if "seconds" in losses else [])], done
