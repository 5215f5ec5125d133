"""The calibration world for benchmarks: generated and its tiny CLIP trained with the project's own
functions (as the workflow's world rules do), or reused from a folder a previous run left.

    build_world(dest)  ->  dest/data (the world; test split in dest/data/fairface), dest/models/clip
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))


def build_world(dest: str | Path, max_steps: int | None = None, threads: int = 2) -> dict:
    """Generate + train into dest unless dest already holds both; returns paths and build seconds.
    `max_steps` caps training (a quick, less trained model: only for smoke runs)."""
    from vlmbias.world.generate import generate_world
    from vlmbias.world.model import train_world_model

    dest = Path(dest)
    data, model = dest / "data", dest / "models" / "clip"
    world = dict(default_config()["world"])
    out = {"data": data, "fairface": data / "fairface", "model": model, "generate_s": 0.0, "train_s": 0.0}
    if not (data / "world_spec.json").is_file():
        t = time.perf_counter()
        generate_world(world, data)
        out["generate_s"] = time.perf_counter() - t
    if not (model / "world_model.json").is_file():
        if max_steps:
            world["model"] = {**world.get("model", {}), "max_steps": int(max_steps)}
        t = time.perf_counter()
        train_world_model(data, world, model, threads=threads)
        out["train_s"] = time.perf_counter() - t
    return out


def world_queries(encoder, config: dict | None = None) -> tuple[list[str], np.ndarray]:
    """The world's real query sets (calibration.query_sets of config.yaml) embedded as the pipeline
    does (prompt ensembling); returns (query ids, [n_queries, dim] float32)."""

    from vlmbias.audit.embed import embed_queries

    config = config or default_config()
    ids, embs = [], []
    for name in config["calibration"]["query_sets"]:
        emb, table = embed_queries(name, config["query_sets"][name], encoder)
        ids += [f"{name}/{q}" for q in table["query_id"]]
        embs.append(emb)
    return ids, np.concatenate(embs)
