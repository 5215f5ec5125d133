"""CLIP image preprocessing from a model folder's preprocessor_config.json, without transformers.

Importing transformers' `CLIPImageProcessor` pulls in torchvision and torch._dynamo (seconds per job).
`load_clip_preprocessor` reads the config itself and runs the same operations, in the same order and
dtypes, as that processor does on CPU for PIL images (transformers 5: its torchvision backend):

1. convert to RGB (an image with transparency is composited onto white first), uint8, channels first;
2. resize so the shorter edge is `size.shortest_edge` (the longer edge truncated to an int), with
   `torch.nn.functional.interpolate` (antialiased bicubic or bilinear), one image at a time;
3. center crop to `crop_size`, zero padding (in uint8) where the image is smaller;
4. float32, minus mean*255, divided by std*255 (transformers folds the 1/255 rescale into mean and std).

The result is bitwise equal to transformers' output. A config this module does not implement exactly
gives None, and a call it does not handle (not PIL images, other arguments) goes to transformers.
"""
from __future__ import annotations

import json
import numbers
import shutil
from pathlib import Path

import numpy as np
import torch

CONFIG_NAME = "preprocessor_config.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# transformers' CLIPImageProcessor class defaults (a key missing from the config, or null, takes these)
DEFAULTS = {
    "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3,
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
}
# keys that do not change processing (the processor class is chosen by the caller, not by the file)
INERT = {"image_processor_type", "feature_extractor_type", "processor_class"}
PROCESSOR_TYPES = {"CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPFeatureExtractor"}
# keys implemented only at their default value (null or false)
OFF_BY_DEFAULT = {"do_pad", "pad_size", "default_to_square", "data_format", "input_data_format", "device",
                  "return_tensors", "image_seq_length"}
BICUBIC, BILINEAR = 3, 2


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _settings(raw: dict) -> dict | None:
    """The processing settings of a preprocessor config, or None where one is outside what is implemented."""
    for key, value in raw.items():
        if key in INERT:
            if key == "image_processor_type" and value not in PROCESSOR_TYPES:
                return None
        elif key in OFF_BY_DEFAULT:
            if value not in (None, False):
                return None
        elif key == "disable_grouping":
            if value not in (None, True):  # on CPU transformers processes images one by one, as here
                return None
        elif key not in DEFAULTS:
            return None  # e.g. use_square_size, or a key of another processor
    s = {key: raw[key] if raw.get(key) is not None else default for key, default in DEFAULTS.items()}
    # old configs give sizes as ints: the resize size is then the shorter edge, the crop a square
    if _is_int(s["size"]):
        s["size"] = {"shortest_edge": s["size"]}
    if _is_int(s["crop_size"]):
        s["crop_size"] = {"height": s["crop_size"], "width": s["crop_size"]}
    flags = ("do_convert_rgb", "do_resize", "do_center_crop", "do_rescale", "do_normalize")
    if not all(isinstance(s[f], bool) for f in flags):
        return None
    if not (s["do_convert_rgb"] and s["do_rescale"] and s["do_normalize"]):
        return None  # without these the output is not float32 RGB; transformers handles them
    size, crop = s["size"], s["crop_size"]
    if not (isinstance(size, dict) and set(size) == {"shortest_edge"} and _is_int(size["shortest_edge"])):
        return None
    if not (isinstance(crop, dict) and set(crop) == {"height", "width"} and all(map(_is_int, crop.values()))):
        return None
    if s["resample"] not in (BICUBIC, BILINEAR) or isinstance(s["resample"], bool):
        return None
    if not (_is_real(s["rescale_factor"]) and s["rescale_factor"] > 0):
        return None
    for key in ("image_mean", "image_std"):
        v = s[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_real, v))):
            return None
        s[key] = tuple(v)
    if not all(s["image_std"]):
        return None
    return s


def _native_uint8(resample: int) -> bool:
    """Whether torchvision resizes uint8 images directly (else through float32 and rounding): always for
    bicubic on CPU, for bilinear only where torch has its vectorised uint8 kernel."""
    if resample == BICUBIC:
        return True
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def _rgb_array(image) -> np.ndarray:
    """PIL image -> uint8 HxWx3, transparency composited onto white (as transformers does)."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def _resized_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Shorter edge -> `shortest`, longer edge scaled and truncated (transformers' arithmetic, in float)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest * long / short)
    return (new_long, shortest) if width <= height else (shortest, new_long)


class ClipPreprocessor:
    """Callable like `CLIPImageProcessor`: `processor(images=..., return_tensors="pt")["pixel_values"]`."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = folder
        self.settings = settings
        for key, value in settings.items():  # image_mean, crop_size, ... as attributes, like transformers'
            setattr(self, key, value)
        self._fallback = None
        self._mean_std = None

    def _transformers(self):
        """transformers' own processor for this folder, for calls outside the implemented path."""
        if self._fallback is None:
            from transformers import CLIPImageProcessor

            self._fallback = CLIPImageProcessor.from_pretrained(str(self.folder))
        return self._fallback

    def __getattr__(self, attr):  # anything else the transformers processor has
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self._transformers(), attr)

    def save_pretrained(self, out_dir, **kwargs):
        if kwargs:
            return self._transformers().save_pretrained(out_dir, **kwargs)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.folder / CONFIG_NAME, out / CONFIG_NAME)
        return [str(out / CONFIG_NAME)]

    def __call__(self, images=None, *args, **kwargs):
        from PIL import Image

        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if args or kwargs != {"return_tensors": "pt"} or not batch or \
                not all(isinstance(im, Image.Image) for im in batch):
            return self._transformers()(images, *args, **kwargs)
        out = [self._one(im) for im in batch]
        if len({tuple(x.shape) for x in out}) > 1:  # uncropped images of different sizes: transformers' error
            return self._transformers()(images, *args, **kwargs)
        return {"pixel_values": torch.stack(out)}

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        size = _resized_size(x.shape[-2], x.shape[-1], s["size"]["shortest_edge"])
        if size == tuple(x.shape[-2:]):
            return x
        mode = "bicubic" if s["resample"] == BICUBIC else "bilinear"
        if _native_uint8(s["resample"]):
            return torch.nn.functional.interpolate(x, size=list(size), mode=mode, align_corners=False, antialias=True)
        y = torch.nn.functional.interpolate(x.to(torch.float32), size=list(size), mode=mode, align_corners=False,
                                            antialias=True)
        return y.round_().to(torch.uint8)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        ch, cw = self.settings["crop_size"]["height"], self.settings["crop_size"]["width"]
        h, w = x.shape[-2:]
        if ch > h or cw > w:  # pad with zeros to at least the crop, the odd pixel going right / bottom
            top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
            canvas = x.new_zeros(x.shape[:-2] + (max(h, ch), max(w, cw)))
            canvas[..., top:top + h, left:left + w] = x
            x, (h, w) = canvas, canvas.shape[-2:]
        top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        return x[..., top:top + ch, left:left + cw]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self._mean_std is None:
            s = self.settings
            scale = 1.0 / s["rescale_factor"]  # rescale folded into mean and std, in float32 as transformers does
            mean = torch.tensor(s["image_mean"]) * scale
            std = torch.tensor(s["image_std"]) * scale
            self._mean_std = (mean.to(torch.float32).view(-1, 1, 1), std.to(torch.float32).view(-1, 1, 1))
        mean, std = self._mean_std
        return x.to(torch.float32).sub_(mean).div_(std)

    def _one(self, image) -> torch.Tensor:
        x = torch.from_numpy(_rgb_array(image)).permute(2, 0, 1).contiguous().unsqueeze(0)
        if self.settings["do_resize"]:
            x = self._resize(x)
        if self.settings["do_center_crop"]:
            x = self._crop(x)
        return self._normalise(x)[0]


def load_clip_preprocessor(folder) -> ClipPreprocessor | None:
    """The image preprocessor of a local model folder, or None where transformers must build it (no
    preprocessor_config.json, a processor_config.json that may override it, or settings not implemented
    here exactly)."""
    folder = Path(folder)
    config = folder / CONFIG_NAME
    if not config.is_file() or (folder / "processor_config.json").exists():
        return None
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # transformers reports an unreadable file
    if not isinstance(raw, dict):
        return None
    settings = _settings(raw)
    return ClipPreprocessor(folder, settings) if settings is not None else None


# ---- tokenizer -------------------------------------------------------------------------------------------

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# transformers' tokenizer defaults: a model_max_length above this means "no limit" (never truncate to it)
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)
TOKENIZER_CONFIG_KEYS = {"backend", "bos_token", "eos_token", "pad_token", "unk_token", "model_max_length",
                         "tokenizer_class", "is_local", "local_files_only", "name_or_path"}


def _clip_pipeline() -> dict:
    """The normaliser, pre-tokeniser and decoder transformers' CLIPTokenizer puts around its BPE model,
    as tokenizer.json writes them: a folder whose file has exactly these is read as transformers reads it."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    t = Tokenizer(BPE(vocab={EOS: 0}, merges=[], continuing_subword_prefix="", end_of_word_suffix="</w>",
                      fuse_unk=False, unk_token=EOS))
    t.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Lowercase()])
    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
    t.decoder = decoders.ByteLevel()
    return json.loads(t.to_str())


def _plain_clip_tokenizer(spec: dict, config: dict) -> bool:
    """Whether a tokenizer.json (`spec`) with its tokenizer_config.json is the CLIP byte-level BPE that
    transformers' CLIPTokenizer builds: the same pipeline, the CLIP special tokens and nothing else added."""
    if set(config) - TOKENIZER_CONFIG_KEYS or config.get("tokenizer_class", "CLIPTokenizer") != "CLIPTokenizer" \
            or config.get("backend", "tokenizers") != "tokenizers":
        return False
    if (config.get("bos_token"), config.get("eos_token"), config.get("pad_token"), config.get("unk_token")) != \
            (BOS, EOS, EOS, EOS):
        return False
    limit = config.get("model_max_length", VERY_LARGE_INTEGER)
    if not _is_int(limit):
        return False
    canon = _clip_pipeline()
    if any(spec.get(k) != canon[k] for k in ("normalizer", "pre_tokenizer", "decoder", "truncation", "padding")):
        return False
    model, want = spec.get("model") or {}, canon["model"]
    if any(model.get(k) != want[k] for k in want if k not in ("vocab", "merges")):
        return False
    vocab = model.get("vocab") or {}
    if BOS not in vocab or EOS not in vocab:
        return False
    post = {"type": "RobertaProcessing", "sep": [EOS, vocab[EOS]], "cls": [BOS, vocab[BOS]],
            "trim_offsets": False, "add_prefix_space": False}
    added = [{"id": vocab[tok], "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for tok in (BOS, EOS)]
    return spec.get("post_processor") == post and spec.get("added_tokens") == added


class Encoding(dict):
    """The tokenizer's output: a dict of input_ids and attention_mask, movable with `.to(device)`."""

    def to(self, device):
        return Encoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


class ClipTokenizer:
    """Callable like transformers' CLIPTokenizer for the calls vlmbias makes: a text or a list of texts,
    `padding` True/False, `truncation` True/False/None, `max_length`, `return_tensors` None or "pt".
    Anything else (decode, save_pretrained, other arguments) goes to transformers' own tokenizer."""

    def __init__(self, folder: Path, backend, model_max_length: int):
        self.folder, self._backend, self.model_max_length = folder, backend, model_max_length
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = BOS, EOS, EOS, EOS
        self.bos_token_id = backend.token_to_id(BOS)
        self.eos_token_id = self.pad_token_id = self.unk_token_id = backend.token_to_id(EOS)
        self.padding_side = self.truncation_side = "right"
        self._fallback = None

    def _transformers(self):
        if self._fallback is None:
            from transformers import AutoTokenizer

            self._fallback = AutoTokenizer.from_pretrained(str(self.folder))
        return self._fallback

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self._transformers(), attr)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def _limit(self, truncation, max_length) -> int | None:
        """The length to truncate to, as transformers decides it (None: no truncation)."""
        if truncation is None and max_length is not None:
            truncation = True  # max_length alone turns truncation on
        if not truncation:
            return None
        if max_length is None:
            return self.model_max_length if self.model_max_length <= LARGE_INTEGER else None
        return max_length

    def __call__(self, text=None, padding=False, truncation=None, max_length=None, return_tensors=None, **kwargs):
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        handled = (not kwargs and padding in (True, False) and truncation in (True, False, None)
                   and (max_length is None or (_is_int(max_length) and max_length > 2))
                   and return_tensors in (None, "pt") and texts and all(isinstance(t, str) for t in texts)
                   and not (max_length is not None and padding and truncation is None))
        if not handled:
            return self._transformers()(text, padding=padding, truncation=truncation, max_length=max_length,
                                        return_tensors=return_tensors, **kwargs)
        limit = self._limit(truncation, max_length)
        if limit is None:
            self._backend.no_truncation()
        else:
            self._backend.enable_truncation(max_length=limit, stride=0, strategy="longest_first", direction="right")
        ids = [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=True)]
        if return_tensors == "pt" and not padding and len({len(i) for i in ids}) > 1:
            return self._transformers()(text, padding=padding, truncation=truncation, max_length=max_length,
                                        return_tensors=return_tensors, **kwargs)  # transformers' error
        width = max(map(len, ids)) if padding else 0
        masks = [[1] * len(i) + [0] * (width - len(i)) for i in ids]
        ids = [i + [self.pad_token_id] * (width - len(i)) for i in ids]
        if return_tensors == "pt":
            return Encoding(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(masks, dtype=torch.long))
        return Encoding(input_ids=ids if batched else ids[0], attention_mask=masks if batched else masks[0])


def load_clip_tokenizer(folder) -> ClipTokenizer | None:
    """The tokenizer of a local model folder read with the `tokenizers` library alone, or None where
    transformers must load it (no tokenizer.json, other files that may change it, or anything but the
    plain CLIP byte-level BPE that transformers' CLIPTokenizer builds)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file() or \
            any((folder / f).exists() for f in ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")):
        return None
    try:
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(spec, dict) and isinstance(config, dict) and _plain_clip_tokenizer(spec, config)):
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(spec))
    return ClipTokenizer(folder, backend, config.get("model_max_length", VERY_LARGE_INTEGER))
