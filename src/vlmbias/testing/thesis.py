"""Offline stand-ins for everything `config/thesis.yaml` downloads, so that the real experiment's
config runs end to end here (tests/test_thesis_run.py):
- its data at the config's own relative paths: FairFace val and train (`make_thesis_data`) and COCO
  captions;
- its models under their own names: tiny open_clip architectures registered as the thesis'
  architectures and pretrained tags (the model entries' `config` and `tags` keys), and a tiny HF CLIP
  in a Hugging Face hub cache as `openai/clip-vit-base-patch32` (HF_HOME + HF_HUB_OFFLINE);
- the web search (a local search engine, `vlmbias.testing.search`) and DeepFace's weights
  (`vlmbias.testing.deepface`, with OpenCV's own face detector).
Only data roots, model weights and where the search and DeepFace's weights are found change."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from vlmbias.testing import make_hf_hub_cache, make_thesis_data, make_tiny_open_clip_tags
from vlmbias.testing.deepface import make_deepface_home
from vlmbias.testing.search import SearchStandIn, make_search_images


@contextmanager
def thesis_standins(workdir: str | Path, config: dict):
    """Builds the stand-ins for `config` (config/thesis.yaml, read) under workdir and yields
    (config overrides to pass as a further config file, environment variables for the run); the
    search engine answers until the block ends."""
    workdir = Path(workdir)
    standins = workdir / "standins"
    make_thesis_data(workdir)
    open_clip = {name: spec for name, spec in config["models"].items() if spec["backend"] == "open_clip"}
    archs: dict[str, list[str]] = {}
    for spec in open_clip.values():
        archs.setdefault(spec["name"], []).append(spec["pretrained"])
    registered = make_tiny_open_clip_tags(standins / "open_clip", archs)
    hf_home = standins / "hf"
    for spec in config["models"].values():
        if spec["backend"] == "hf":
            make_hf_hub_cache(hf_home, spec["name"])
    mit = config["mitigation"]
    images = make_search_images(standins / "search", mit["acquire"]["keywords"])
    deepface_home = make_deepface_home(standins / "deepface")
    with SearchStandIn(images) as search:
        overrides = {"models": {name: dict(registered) for name in open_clip},
                     "mitigation": {"acquire": search.acquire_overrides(),
                                    "label": {"deepface_home": str(deepface_home)}}}
        yield overrides, {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
