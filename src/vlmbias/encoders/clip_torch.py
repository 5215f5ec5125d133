"""The inference forward of a Hugging Face `CLIPModel` in plain torch, loaded from a local folder.

Importing transformers' CLIP modelling code costs seconds per job (it pulls in torch._dynamo,
torch.distributed and scipy); a job that only embeds texts or images needs none of it. This module
rebuilds the same network with the same submodule and parameter names (so the checkpoint's state
dict loads strictly, a LoRA adapter merges by name and hooks on `text_model.embeddings` work) and
runs the same operations in the same order as transformers 5 with its default attention (torch's
scaled_dot_product_attention), so features match transformers bit for bit on the CPU.

`load_native_clip(folder, dtype)` returns None for anything it does not reproduce exactly (other
model types, sharded or missing weights, unknown activations or attention settings, mismatching
weights), and the caller then loads the model with transformers instead.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from vlmbias import VlmbiasError

log = logging.getLogger(__name__)


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _gelu_new(x):  # the tanh approximation written out, as transformers' gelu_new computes it
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x):
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATIONS = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class Activation(nn.Module):
    """A parameter-free activation named as in transformers' configs (`hidden_act`)."""

    def __init__(self, name: str):
        super().__init__()
        if name not in ACTIVATIONS:
            raise VlmbiasError(f"activation {name!r} is not supported by the plain-torch CLIP "
                               f"(supported: {sorted(ACTIVATIONS)}); load the model with transformers")
        self.name, self.fn = name, ACTIVATIONS[name]

    def forward(self, x):
        return self.fn(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, d // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, mask, causal: bool):
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        # transformers asks SDPA for its causal kernel only when no mask was built and there is more than one token
        causal = causal and mask is None and q.shape[2] > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scale, is_causal=causal)
        out = out.transpose(1, 2).contiguous()
        return self.out_proj(out.reshape(*x.shape[:-1], -1).contiguous())


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.activation_fn = Activation(cfg.hidden_act)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, mask, causal: bool):
        x = x + self.self_attn(self.layer_norm1(x), mask, causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, mask=None, causal: bool = False):
        for layer in self.layers:
            x = layer(x, mask, causal)
        return x


def _embedding(n: int, d: int) -> nn.Embedding:
    # given a weight, nn.Embedding skips its random init: under the meta device that init would import
    # torch._dynamo (seconds); the checkpoint overwrites the weight anyway
    return nn.Embedding(n, d, _weight=torch.empty(n, d))


def _positions(n: int) -> torch.Tensor:
    # on the CPU even while the model is built on the meta device: no checkpoint holds these ids, and
    # arange on meta imports torch.fx's symbolic shapes (most of a second)
    return torch.arange(n, device="cpu").expand((1, -1))


class TextEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.token_embedding = _embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = _embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.register_buffer("position_ids", _positions(cfg.max_position_embeddings), persistent=False)

    def forward(self, input_ids=None, position_ids=None):
        n = input_ids.shape[-1]
        if n > self.position_embedding.weight.shape[0]:
            raise VlmbiasError(f"{n} text tokens are more than the model's {self.position_embedding.weight.shape[0]} positions")
        if position_ids is None:
            position_ids = self.position_ids[:, :n]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


def causal_padding_mask(attention_mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The boolean [batch, 1, n, n] mask transformers builds for SDPA (True = attend): key j visible
    to query i when j <= i and j is not padding; None when nothing is padded (SDPA's causal flag then)."""
    if attention_mask is None:
        return None
    keep = attention_mask.to(torch.bool)
    if keep.sum() == keep.numel():
        return None
    pos = torch.arange(n, device=keep.device)
    mask = (pos[None, None, None, :] <= pos[None, None, :, None]) & keep[:, None, None, :]
    return mask.expand(keep.shape[0], -1, n, n)


class TextTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.eos_token_id = cfg.eos_token_id

    def forward(self, input_ids, attention_mask=None):
        """The final layer-normed state at each sequence's end token ([batch, hidden])."""
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        x = self.embeddings(input_ids=input_ids, position_ids=None)
        if attention_mask is not None and attention_mask.shape[-1] != x.shape[1]:
            raise VlmbiasError(f"attention mask of width {attention_mask.shape[-1]} for {x.shape[1]} tokens")
        mask = causal_padding_mask(attention_mask, x.shape[1])
        x = self.final_layer_norm(self.encoder(x, mask, causal=True))
        ids = input_ids.to(dtype=torch.int, device=x.device)
        # legacy configs (eos id 2) pool at the highest token id, as the original CLIP did; newer ones at the first eos
        end = ids.argmax(dim=-1) if self.eos_token_id == 2 else (ids == self.eos_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), end]


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.image_size, d = cfg.image_size, cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        n = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.position_embedding = _embedding(n, d)
        self.register_buffer("position_ids", _positions(n), persistent=False)

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        if h != self.image_size or w != self.image_size:
            raise VlmbiasError(f"input image size ({h}*{w}) does not match the model's ({self.image_size}*{self.image_size})")
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(b, 1, -1), patches], dim=1)
        return x + self.position_embedding(self.position_ids)


class VisionTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic: transformers' name
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values):
        """The post-layer-normed class-token state ([batch, hidden])."""
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return self.post_layernorm(x[:, 0, :])


class NativeCLIP(nn.Module):
    """CLIPModel's inference forward; `get_text_features` / `get_image_features` return the
    projected features as tensors."""

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.config = config
        t, v = config.text_config, config.vision_config
        self.text_model = TextTransformer(t)
        self.vision_model = VisionTransformer(v)
        self.visual_projection = nn.Linear(v.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(t.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(getattr(config, "logit_scale_init_value", 2.6592))))

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None):
        if position_ids is not None:
            raise VlmbiasError("the plain-torch CLIP takes no position_ids")
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False):
        if interpolate_pos_encoding:
            raise VlmbiasError("the plain-torch CLIP does not interpolate position encodings")
        return self.visual_projection(self.vision_model(pixel_values))


# --------------------------------------------------------------------------- loading

TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "hidden_act", "layer_norm_eps", "eos_token_id")
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
               "patch_size", "num_channels", "hidden_act", "layer_norm_eps")
# settings that change transformers' forward away from the one rebuilt here
ATTENTION_KEYS = ("_attn_implementation", "attn_implementation", "_attn_implementation_internal")


def _size_keys(keys) -> list[str]:
    """The size keys among `keys` (integers that must be positive; the eos id may be 0)."""
    return [k for k in keys if k not in ("hidden_act", "layer_norm_eps", "eos_token_id")]


def _unsupported(cfg: dict) -> str | None:
    """Why a config.json is not one this module reproduces exactly, or None."""
    if cfg.get("model_type") != "clip":
        return f"model_type {cfg.get('model_type')!r}"
    if "text_config_dict" in cfg or "vision_config_dict" in cfg:
        return "legacy *_config_dict entries"
    if type(cfg.get("projection_dim")) is not int:
        return "no projection_dim"
    for part, keys in (("text_config", TEXT_KEYS), ("vision_config", VISION_KEYS)):
        sub = cfg.get(part)
        if not isinstance(sub, dict):
            return f"no {part}"
        missing = [k for k in keys if sub.get(k) is None]
        if missing:
            return f"{part} lacks {missing}"
        if sub["hidden_act"] not in ACTIVATIONS:
            return f"{part}.hidden_act {sub['hidden_act']!r}"
        ints = [k for k in keys if k not in ("hidden_act", "layer_norm_eps") and type(sub[k]) is not int]
        if ints:
            return f"{part} has non-integer {ints}"
        if type(sub["layer_norm_eps"]) not in (int, float) or any(sub[k] <= 0 for k in _size_keys(keys)):
            return f"{part} has a non-numeric layer_norm_eps or a size that is not positive"
        if sub["hidden_size"] % sub["num_attention_heads"]:
            return f"{part}.hidden_size is not a multiple of num_attention_heads"
        if sub.get("is_causal") is False or any(sub.get(k) not in (None, "sdpa") for k in ATTENTION_KEYS):
            return f"{part} attention settings"
    if any(cfg.get(k) not in (None, "sdpa") for k in ATTENTION_KEYS):
        return "attention settings"
    return None


def _namespace(cfg: dict) -> SimpleNamespace:
    """The config as attributes (`config.text_config.hidden_size`), every key of config.json kept."""
    top = {k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")}
    return SimpleNamespace(**top, text_config=SimpleNamespace(**cfg["text_config"]),
                           vision_config=SimpleNamespace(**cfg["vision_config"]))


def load_native_clip(folder, dtype: torch.dtype = torch.float32) -> NativeCLIP | None:
    """The CLIPModel in `folder` (config.json + one model.safetensors) as a `NativeCLIP` in eval
    mode, or None when it is anything this module does not reproduce exactly: the caller then loads
    it with transformers."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file() or (folder / "model.safetensors.index.json").exists():
        return None
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    why = _unsupported(cfg) if isinstance(cfg, dict) else "not a JSON object"
    if why:
        log.debug("%s: plain-torch CLIP does not cover %s; using transformers", folder, why)
        return None
    with torch.device("meta"):  # no random initialisation of weights that are overwritten at once
        model = NativeCLIP(_namespace(cfg))
    try:
        state = load_file(str(weights))
    except Exception:  # an unreadable file: transformers reports it in its own words
        return None
    ours = model.state_dict()
    if set(state) != set(ours) or any(tuple(state[k].shape) != tuple(ours[k].shape) for k in ours):
        log.debug("%s: weights do not match the CLIP config; using transformers", folder)
        return None
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    return model.eval()
