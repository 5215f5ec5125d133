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
import os
import re
from contextlib import contextmanager
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


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
HUB_PROBE_TIMEOUT_S = 5.0


def local_model_folder(name: str, what: str = "model") -> Path | None:
    """Where a model name points: an existing folder -> that folder (absolute); a hub id (`org/name`)
    -> None; anything else that looks like a path ('./x', '/x', '~/x', 'a/b/c', or a bare 'x', which
    no CLIP repository on the hub is named) -> "no such folder" at once, never a hub lookup."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise VlmbiasError(f"{what} {name} is a file; a model is a folder (config.json and .safetensors "
                           "weights inside) or a hub id such as openai/clip-vit-base-patch32")
    if HUB_ID.fullmatch(name) and ".." not in name:
        return None
    raise VlmbiasError(f"{what} {name}: no such folder (looked in {path.resolve()}); a local model is an "
                       "existing folder, a hub model an id of the form org/name (e.g. openai/clip-vit-base-patch32)")


@contextmanager
def _hub_offline():
    """Force huggingface_hub (and transformers and open_clip through it) to use its cache only."""
    from huggingface_hub import constants

    def quiet(record: logging.LogRecord) -> bool:  # open_clip logs each cache miss on the root logger
        return not str(record.msg).startswith("Failed to download")

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
        logging.getLogger().removeFilter(quiet)


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None when it answers: one request, no retries."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # DNS failure, refused connection, timeout, proxy error: all mean "offline"
        first = str(e).splitlines()[0][:120] if str(e) else ""
        return f"{constants.ENDPOINT} cannot be reached ({type(e).__name__}: {first})"
    return None


def _not_cached(e: BaseException) -> bool:
    """Whether a load failed only because the hub's cache lacks a file (not a real loading error)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or (
                isinstance(e, OSError) and ("offline" in str(e).lower() or "cached files" in str(e))):
            return True
        e = e.__cause__ or e.__context__
    return False


def from_hub(load: Callable[[], object], what: str):
    """Run a loader that may fetch from the Hugging Face hub: from the local cache first (no network),
    and online only when that copy is missing and the hub answers one quick request, so that offline
    without a local copy is one sentence at once instead of a minute of retries."""
    try:
        with _hub_offline():
            return load()
    except VlmbiasError:
        raise
    except Exception as e:
        if not _not_cached(e):
            raise
        why = hub_unreachable()
        if why:
            from huggingface_hub import constants

            raise VlmbiasError(
                f"cannot load {what}: it is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
                "loading a hub model needs network access once, or point the model at a local folder") from None
    log.info("fetching %s from the Hugging Face hub", what)
    return load()


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


def load_clip_weights(name: str, dtype: torch.dtype, what: str = "model", native: bool = True):
    """A CLIPModel from safetensors only (see `refuse_pickle_only`; transformers refuses a hub model
    that has no safetensors weights). With `native`, a local folder loads as the plain-torch copy of
    the inference forward (`vlmbias.encoders.clip_torch`: same features bit for bit, seconds less of
    imports) where that covers the checkpoint; otherwise, and for training (`native=False`: peft and
    gradients need the real model), transformers' `CLIPModel.from_pretrained`."""
    refuse_pickle_only(Path(name), what)
    if native and Path(name).is_dir():
        from vlmbias.encoders.clip_torch import load_native_clip

        model = load_native_clip(name, dtype)
        if model is not None:
            return model
    from transformers import CLIPModel

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
    hub = name.startswith("hf-hub:")  # open_clip's own hub form: architecture and weights from one hub repo
    if hub:
        repo = name[len("hf-hub:"):]
        if not HUB_ID.fullmatch(repo):
            raise VlmbiasError(f"open_clip model {name!r}: after 'hf-hub:' comes a hub id of the form org/name")
        if pretrained:
            raise VlmbiasError(f"open_clip model {name!r} brings its own weights; give no pretrained tag")
    elif name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        raise VlmbiasError(f"unknown open_clip model {name!r}; similar names: {close or open_clip.list_models()[:8]}")
    local = None
    if pretrained and Path(str(pretrained)).exists():
        local = Path(str(pretrained))
    elif pretrained and not hub:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise VlmbiasError(f"open_clip model {name!r} has no pretrained tag {pretrained!r}; known tags: {tags}")
        file = (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("file")
        local = Path(file) if file else None  # a local tag (`tags`): its registered checkpoint
    if not pretrained and not hub:
        torch.manual_seed(0)  # random weights (tests, smoke runs) must still be reproducible

    def create():
        return open_clip.create_model_and_transforms(name, pretrained=pretrained or None, device=device)

    what = name if hub else f"open_clip {name}:{pretrained}"
    try:
        model, _, preprocess = create() if local or not (pretrained or hub) else from_hub(create, what)
    except VlmbiasError:
        raise
    except Exception as e:  # a local checkpoint that fails is the checkpoint's fault, never the network's
        cause = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if local is not None:
            raise VlmbiasError(f"the weights in {local} do not match the open_clip architecture {name} (was the "
                               f"checkpoint saved from another architecture?): {cause}") from None
        if isinstance(e, (OSError, ConnectionError)) or _not_cached(e):
            raise offline_error(what, e) from None
        raise VlmbiasError(f"cannot load {what}: {cause}") from None
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = open_clip.get_tokenizer(name)
    context = getattr(tokenizer, "context_length", None)
    warned: set[str] = set()

    def text_fn(texts):
        encode = getattr(tokenizer, "encode", None)  # open_clip's tokenizers truncate silently: say so
        if context and callable(encode):
            for text in texts:
                n = len(encode(text)) + 2  # + start and end tokens
                if n > context and text not in warned:
                    warned.add(text)
                    log.warning("query %r is %d tokens long, more than the model's context length of %d: only "
                                "its first %d tokens are encoded", text, n, context, context)
        return model.encode_text(tokenizer(texts).to(device))

    return Encoder(
        name=name if hub else f"{name}:{pretrained}", preprocess=preprocess, device=device, dtype=dtype,
        module=model, _image_fn=model.encode_image, _text_fn=text_fn,
    )


def _hf_load(name: str, what: str, load: Callable):
    """`load(source)` on the local folder of `name`, else through the hub; every failure is one
    sentence (no such folder, not a CLIPModel directory, or offline without a local copy: found out
    at once, see `from_hub`)."""
    folder = local_model_folder(name, what)
    try:
        return load(str(folder)) if folder else from_hub(lambda: load(name), f"Hugging Face {what} {name}")
    except VlmbiasError:
        raise
    except Exception as e:
        if folder:
            raise VlmbiasError(f"{what} {name} is not a loadable CLIPModel directory: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        raise offline_error(f"Hugging Face {what} {name}", e) from None


class LazyImageProcessor:
    """A model's CLIPImageProcessor, loaded on first use: importing it pulls in torchvision and
    torch._dynamo (seconds per job), which a job that only encodes texts never needs."""

    def __init__(self, name: str, what: str):
        self._name, self._what, self._processor = name, what, None

    def _get(self):
        if self._processor is None:
            def load(source):
                from vlmbias.encoders.clip_preprocess import load_clip_preprocessor
                own = load_clip_preprocessor(source) if Path(source).is_dir() else None  # no transformers import
                if own is not None:
                    return own
                from transformers import CLIPImageProcessor
                return CLIPImageProcessor.from_pretrained(source)
            self._processor = _hf_load(self._name, self._what, load)
        return self._processor

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def __getattr__(self, attr):  # save_pretrained, image_mean, ...
        return getattr(self._get(), attr)


def load_hf_parts(name: str, dtype: torch.dtype, what: str = "model", native: bool = True):
    """(CLIPModel from safetensors, tokenizer, image processor loaded on first use) of a hub id or
    directory; a failure is one sentence (`_hf_load`). `native`: see `load_clip_weights` (inference
    only; training asks for transformers' model)."""
    def load(source):
        from vlmbias.encoders.clip_preprocess import load_clip_tokenizer
        model = load_clip_weights(source, dtype, what, native=native)
        # for inference, a standard CLIP tokenizer without transformers; training gets transformers' own
        tokenizer = load_clip_tokenizer(source) if native and Path(source).is_dir() else None
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(source)
        return model, tokenizer

    model, tokenizer = _hf_load(name, what, load)
    return model, tokenizer, LazyImageProcessor(name, what)


def _load_hf(spec: dict, device: str, dtype: torch.dtype) -> Encoder:
    name = str(spec["name"])
    model, tokenizer, processor = load_hf_parts(name, dtype)
    if spec.get("adapter"):
        model = _apply_adapter(model, Path(spec["adapter"]), name,
                               reload=lambda: _hf_load(name, "model", lambda s: load_clip_weights(s, dtype, native=False)))
    model = model.to(device).eval()

    def preprocess(img):
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    # a tokenizer saved without model_max_length truncates nowhere; the model's positions are the limit
    context = getattr(model.config.text_config, "max_position_embeddings", None)
    usable = getattr(tokenizer, "model_max_length", None)
    if isinstance(usable, int) and 0 < usable < 1_000_000:
        context = min(context, usable) if context else usable
    warned: set[str] = set()

    def text_fn(texts):
        if context:
            lengths = [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]
            for text, n in zip(texts, lengths):
                if n > context and text not in warned:
                    warned.add(text)
                    log.warning("query %r is %d tokens long, more than the model's context length of %d: only its "
                                "first %d tokens are encoded", text, n, context, context)
        toks = tokenizer(texts, padding=True, truncation=True, max_length=context, return_tensors="pt").to(device)
        return features(model.get_text_features(input_ids=toks["input_ids"], attention_mask=toks["attention_mask"]))

    return Encoder(
        name=name + (f"+{spec['adapter']}" if spec.get("adapter") else ""), preprocess=preprocess,
        device=device, dtype=dtype, module=model,
        _image_fn=lambda px: features(model.get_image_features(pixel_values=px)),
        _text_fn=text_fn,
    )


# adapter_config.json keys that do not change what merging a trained adapter does
_LORA_MERGE_IRRELEVANT = {"peft_type", "r", "lora_alpha", "base_model_name_or_path", "revision", "auto_mapping",
                          "task_type", "peft_version", "inference_mode", "target_modules", "exclude_modules",
                          "layers_pattern", "layers_to_transform", "lora_dropout", "megatron_core", "qalora_group_size"}
_LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")


def _merge_plain_lora(model, adapter: Path) -> bool:
    """Merge a plain LoRA adapter (Linear layers only, scaling lora_alpha / r, float32; no DoRA,
    rsLoRA, bias or extra modules) into `model` in place, exactly as peft's `merge_and_unload` does
    (W += (B @ A) * scaling, the same float32 operations, so the same weights bit for bit) without
    importing peft (about half a second per job). False, model untouched, for any other adapter."""
    import json

    from safetensors.torch import load_file

    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA" or cfg.get("init_lora_weights") is not True:
        return False
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if type(r) is not int or r <= 0 or type(alpha) not in (int, float):
        return False
    extra = {k: v for k, v in cfg.items() if k not in _LORA_MERGE_IRRELEVANT | {"init_lora_weights"}}
    if any(v not in (None, False, {}, [], "none") for v in extra.values()):  # DoRA, rsLoRA, bias, patterns, ...
        return False
    try:
        weights = load_file(str(adapter / "adapter_model.safetensors"))
    except Exception:  # an unreadable file: peft's load below reports it
        return False
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        m = _LORA_KEY.fullmatch(key)
        if m is None or tensor.dtype != torch.float32:
            return False
        pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
    modules = dict(model.named_modules())
    for name, ab in pairs.items():
        layer = modules.get(name)
        if (type(layer) is not torch.nn.Linear or layer.weight.dtype != torch.float32 or set(ab) != {"A", "B"}
                or tuple(ab["A"].shape) != (r, layer.in_features) or tuple(ab["B"].shape) != (layer.out_features, r)):
            return False
    if not pairs:
        return False
    scaling = alpha / r
    with torch.no_grad():
        for name, ab in pairs.items():
            modules[name].weight.data += (ab["B"] @ ab["A"]) * scaling
    return True


def _apply_adapter(model, adapter: Path, base: str, reload: Callable | None = None):
    """`model` with the peft adapter merged in: by hand for a plain LoRA, else by peft, which needs
    transformers' CLIPModel (`reload` gives it when `model` is the plain-torch copy)."""
    if not (adapter / "adapter_config.json").is_file():
        raise VlmbiasError(f"adapter directory {adapter} has no adapter_config.json")
    if not (adapter / "adapter_model.safetensors").is_file():  # peft would unpickle adapter_model.bin
        refuse_pickle_only(adapter, "adapter")
        raise VlmbiasError(f"adapter directory {adapter} has no adapter_model.safetensors")
    if _merge_plain_lora(model, adapter):
        return model
    from peft import PeftModel

    from vlmbias.encoders.clip_torch import NativeCLIP

    if isinstance(model, NativeCLIP):
        if reload is None:
            raise VlmbiasError(f"adapter {adapter} needs peft to merge it, and peft needs transformers' CLIPModel")
        model = reload()

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
        if str(spec["name"]).startswith("hf-hub:") and not spec.get("pretrained"):
            return str(spec["name"])
        return f"{spec['name']}:{spec.get('pretrained')}"
    return (str(spec["name"]) + (f"+{Path(spec['adapter']).name}" if spec.get("adapter") else "")
            + (f"+prompts:{Path(spec['prompts']).name}" if spec.get("prompts") else ""))
