"""One encoder interface for every model backend.

`load_encoder(spec)` is the single front door (like open_clip's `create_model_and_transforms`):
it returns an `Encoder` whose `preprocess` turns a PIL image into a tensor, `encode_images` turns a
batch of those into L2-normalised float32 rows, and `encode_texts` does the same for strings.

Backends (config `models.<name>.backend`):
- `open_clip`: `name` (e.g. ViT-B-32, RN50, xlm-roberta-base-ViT-B-32) + `pretrained` (a tag such as
  `openai`, a local checkpoint path, or null for random weights); `config` optionally points at a
  JSON model config (or a folder of them) to register custom architectures first; `tags` registers
  local safetensors checkpoints as pretrained tags (`{"<arch>:<tag>": file}`).
- `hf`: `name` = a `CLIPModel` hub id or local directory; `adapter` optionally a peft LoRA adapter
  directory loaded on top (and merged, so inference costs nothing extra).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlmbias import VlmbiasError
from vlmbias.encoders.base import features

log = logging.getLogger(__name__)

BACKENDS = ("open_clip", "hf")
# int8: fp32 weights, the image tower's MLP Linear layers dynamically quantised (`quantize_image_tower`), CPU only
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
KNOWN_MODELS = {
    "open_clip": ["ViT-B-32:openai", "RN50:openai", "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k",
                  "ViT-B-32:laion2b_s34b_b79k"],
    "hf": ["openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14"],
}


def offline_error(what: str, e: Exception) -> VlmbiasError:
    return VlmbiasError(
        f"cannot load {what}: the weights are not available locally and could not be fetched "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
        "Loading a hub model needs network access once; offline, point the model at a local path."
    )


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_only(folder: Path, what: str) -> None:
    """A local model folder must hold safetensors weights: a pickle checkpoint (pytorch_model.bin)
    can run arbitrary code when it is unpickled, so vlmbias never loads one."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise VlmbiasError(f"{what} {folder} holds only pickle weights ({', '.join(pickles)}), and vlmbias loads "
                           "safetensors only (unpickling can run code); convert them to .safetensors where you trust "
                           "the file (e.g. save_pretrained(..., safe_serialization=True))")


def load_clip_weights(name: str, dtype: torch.dtype, what: str = "model"):
    """`CLIPModel.from_pretrained` from safetensors only (see `refuse_pickle_only`); transformers
    refuses a hub model that has no safetensors weights."""
    from transformers import CLIPModel

    refuse_pickle_only(Path(name), what)
    return CLIPModel.from_pretrained(name, dtype=dtype, use_safetensors=True)


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return torch.nn.functional.normalize(x, dim=-1).cpu().numpy().astype(np.float32)


@dataclass
class Encoder:
    """A loaded model: `preprocess(PIL) -> tensor`, `encode_images(tensor batch)`, `encode_texts(list)`."""

    name: str
    preprocess: Callable
    _image_fn: Callable[[torch.Tensor], torch.Tensor]
    _text_fn: Callable[[list[str]], torch.Tensor]
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    module: torch.nn.Module | None = None

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        return _normalise(self._image_fn(pixels.to(self.device, self.dtype)))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        if not texts:
            raise VlmbiasError("no texts to encode")
        parts = [_normalise(self._text_fn(list(texts[i:i + batch_size]))) for i in range(0, len(texts), batch_size)]
        return np.concatenate(parts)

    @property
    def dim(self) -> int:
        return int(self.encode_texts(["a"]).shape[1])


def local_tags(spec: dict, where: str = "model") -> dict[tuple[str, str], Path]:
    """A spec's `tags` ({"<architecture>:<tag>": file.safetensors}) as {(arch, tag): path}, checked:
    safetensors files that exist, tags written as open_clip normalises them (it looks tags up lower
    case with '_' for '-', so 'Seed-1' could never be found)."""
    out = {}
    for key, file in (spec.get("tags") or {}).items():
        arch, sep, tag = str(key).partition(":")
        if not (sep and arch and tag):
            raise VlmbiasError(f"{where}.tags: key {key!r} must be '<architecture>:<tag>'")
        if tag != tag.lower().replace("-", "_"):
            raise VlmbiasError(f"{where}.tags: tag {tag!r} of {key!r} must be written as open_clip normalises "
                               f"tags: {tag.lower().replace('-', '_')!r}")
        path = Path(str(file))
        if path.suffix != ".safetensors":
            raise VlmbiasError(f"{where}.tags: {key!r} points at {path}, not a .safetensors file "
                               "(vlmbias loads safetensors only: unpickling can run code)")
        if not path.is_file():
            raise VlmbiasError(f"{where}.tags: weights file of {key!r} not found: {path}")
        out[(arch, tag)] = path
    return out


def register_open_clip(spec: dict) -> None:
    """Make a spec's local architectures (`config`: a JSON file or a folder of them) and local
    pretrained tags (`tags`) known to open_clip, so that `pretrained: <tag>` loads through open_clip's
    own tag path (its registry entry's `file` is the checkpoint; preprocessing as for any tag)."""
    import open_clip

    if spec.get("config"):
        cfg = Path(spec["config"])
        if not cfg.exists():
            raise VlmbiasError(f"open_clip model config not found: {cfg}")
        open_clip.add_model_config(cfg)
    tags = local_tags(spec)
    if not tags:
        return
    registry = getattr(open_clip.pretrained, "_PRETRAINED", None)  # open_clip has no public register call
    if not isinstance(registry, dict):
        raise VlmbiasError(f"open_clip {open_clip.__version__} has no pretrained-tag registry to add local tags to")
    for (arch, tag), path in tags.items():
        registry.setdefault(arch, {})[tag] = {"file": str(path), "url": "", "hf_hub": ""}


def _load_open_clip(spec: dict, device: str, dtype: torch.dtype) -> Encoder:
    import open_clip

    register_open_clip(spec)
    name, pretrained = spec["name"], spec.get("pretrained")
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        raise VlmbiasError(f"unknown open_clip model {name!r}; similar names: {close or open_clip.list_models()[:8]}")
    if pretrained and not Path(str(pretrained)).exists():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise VlmbiasError(f"open_clip model {name!r} has no pretrained tag {pretrained!r}; known tags: {tags}")
    if not pretrained:
        torch.manual_seed(0)  # random weights (tests, smoke runs) must still be reproducible
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None, device=device)
    except (OSError, RuntimeError, ValueError) as e:
        if pretrained and Path(str(pretrained)).exists():
            raise VlmbiasError(f"cannot load checkpoint {pretrained} into open_clip {name}: {e}") from None
        raise offline_error(f"open_clip {name}:{pretrained}", e) from None
    except Exception as e:  # hub client errors (connection, missing cache entry)
        raise offline_error(f"open_clip {name}:{pretrained}", e) from None
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = open_clip.get_tokenizer(name)
    return Encoder(
        name=f"{name}:{pretrained}", preprocess=preprocess, device=device, dtype=dtype, module=model,
        _image_fn=model.encode_image,
        _text_fn=lambda texts: model.encode_text(tokenizer(texts).to(device)),
    )


def load_hf_parts(name: str, dtype: torch.dtype, what: str = "model"):
    """(CLIPModel from safetensors, tokenizer, image processor) of a hub id or directory; every
    failure is one sentence (not a CLIPModel directory, or offline without a local copy)."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    try:
        return (load_clip_weights(name, dtype, what), AutoTokenizer.from_pretrained(name),
                CLIPImageProcessor.from_pretrained(name))
    except VlmbiasError:
        raise
    except Exception as e:
        if Path(name).exists():
            raise VlmbiasError(f"{what} {name} is not a loadable CLIPModel directory: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        raise offline_error(f"Hugging Face {what} {name}", e) from None


def _load_hf(spec: dict, device: str, dtype: torch.dtype) -> Encoder:
    name = str(spec["name"])
    model, tokenizer, processor = load_hf_parts(name, dtype)
    if spec.get("adapter"):
        model = _apply_adapter(model, Path(spec["adapter"]), name)
    model = model.to(device).eval()

    def preprocess(img):
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    def text_fn(texts):
        toks = tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        return features(model.get_text_features(input_ids=toks["input_ids"], attention_mask=toks["attention_mask"]))

    return Encoder(
        name=name + (f"+{spec['adapter']}" if spec.get("adapter") else ""), preprocess=preprocess,
        device=device, dtype=dtype, module=model,
        _image_fn=lambda px: features(model.get_image_features(pixel_values=px)),
        _text_fn=text_fn,
    )


def _apply_adapter(model, adapter: Path, base: str):
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise VlmbiasError(f"adapter directory {adapter} has no adapter_config.json")
    if not (adapter / "adapter_model.safetensors").is_file():  # peft would unpickle adapter_model.bin
        refuse_pickle_only(adapter, "adapter")
        raise VlmbiasError(f"adapter directory {adapter} has no adapter_model.safetensors")
    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        raise VlmbiasError(f"adapter {adapter} does not fit base model {base} (was it trained on another "
                           f"model?): {str(e).splitlines()[0][:300]}") from None
    return model.merge_and_unload()


def load_prompt_encoder(base: str, out_dir, device: str = "cpu") -> Encoder:
    """An `Encoder` for the hf CLIPModel `base` whose texts are encoded with the prompt array saved in
    `out_dir` prepended (`vlmbias.encoders.prompt_array`); images by the unchanged base model."""
    from vlmbias.encoders.prompt_array import PromptedText, freeze, load_prompts

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmbiasError(f"device {device!r} requested but CUDA is not available")
    prompts, _ = load_prompts(out_dir)
    model, tokenizer, processor = load_hf_parts(str(base), torch.float32, "base model")
    model = freeze(model).to(device)
    text = PromptedText(model, tokenizer, prompts.to(device))

    def preprocess(img):
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    return Encoder(name=f"{base}+prompts:{Path(out_dir).name}", preprocess=preprocess, device=device,
                   dtype=torch.float32, module=model,
                   _image_fn=lambda px: features(model.get_image_features(pixel_values=px)),
                   _text_fn=lambda texts: text.encode_texts(texts, device))


def quantize_image_tower(module: torch.nn.Module, backend: str) -> torch.nn.Module:
    """Dynamic int8 quantisation, in place, of the image tower's MLP Linear layers (two thirds of a
    ViT block's Linear FLOPs): weights int8 per output channel, activations quantised per batch,
    products on VNNI: for CPUs where bf16 has no hardware path (benchmarks/RESULTS.md). Attention
    projections stay fp32: quantising them too moved the world model's top-20 overlap with fp32 from
    0.95-0.96 to 0.93 (below the 0.95 target); so do the text tower (queries are few), convolutions and
    the final projection. Activations are scaled per batch, so int8 embeddings depend slightly on
    the batch they were computed in (fp32 and bf16 do not)."""
    import warnings

    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    tower = "visual" if backend == "open_clip" else "vision_model"
    spec = {name: qconfig for name, m in module.named_modules()
            if type(m) is torch.nn.Linear and name.split(".")[0] == tower and ".mlp." in name}
    with warnings.catch_warnings():  # torch.ao's notice that eager quantisation moves to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)


def load_encoder(spec: dict, device: str = "cpu", precision: str = "fp32") -> Encoder:
    """Load any supported model from its config block; errors name the problem, not the library."""
    backend = spec.get("backend")
    if backend not in BACKENDS:
        raise VlmbiasError(f"unknown model backend {backend!r}; expected one of {list(BACKENDS)}")
    if not spec.get("name"):
        raise VlmbiasError(f"model spec {spec} needs a 'name'")
    precision = spec.get("precision", precision)
    if precision not in PRECISIONS:
        raise VlmbiasError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    if precision == "int8" and device != "cpu":
        raise VlmbiasError(f"precision int8 (dynamic quantisation) runs on the CPU only, not on device {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmbiasError(f"device {device!r} requested but CUDA is not available")
    if spec.get("prompts"):  # a learned prompt array (mitigation kind prompt-array): text side only
        if backend != "hf" or spec.get("adapter"):
            raise VlmbiasError(f"a prompt array needs a plain 'hf' base model, got {spec}")
        enc = load_prompt_encoder(spec["name"], spec["prompts"], device)
        log.info("loaded %s (hf + prompt array, fp32 on %s)", enc.name, device)
        return enc
    loader = _load_open_clip if backend == "open_clip" else _load_hf
    enc = loader(spec, device, PRECISIONS[precision])
    if precision == "int8":
        quantize_image_tower(enc.module, backend)  # in place: the encoder's functions call this module
    log.info("loaded %s (%s, %s on %s)", enc.name, backend, precision, device)
    return enc


def model_id(spec: dict) -> str:
    """A readable identity of a model spec, for tables."""
    if spec["backend"] == "open_clip":
        return f"{spec['name']}:{spec.get('pretrained')}"
    return (str(spec["name"]) + (f"+{Path(spec['adapter']).name}" if spec.get("adapter") else "")
            + (f"+prompts:{Path(spec['prompts']).name}" if spec.get("prompts") else ""))
