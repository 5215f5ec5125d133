"""A learned prompt array (Berg et al. 2022) as an encoder: prompt vectors prepended inside a
transformers `CLIPModel`'s text tower; images are encoded by the unchanged base model.

The mitigation stage (`mitigate/prompt_array.py`) learns the vectors and writes them to a folder (`WEIGHTS`:
tensor `prompts`, [n_tokens, text hidden size]; `META` written last); `PromptedText` encodes
texts with them prepended, and `vlmbias.encoders.models.load_encoder` (a model spec with
`prompts: <folder>`) returns an `Encoder` built on it, so every stage that embeds queries works
with it unchanged. See the training module for how the prepend works.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from vlmbias import VlmbiasError
from vlmbias.encoders.base import features

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WEIGHTS, META = "prompts.safetensors", "prompt_array.json"


def freeze(model):
    """The base CLIPModel, frozen and in eval mode: only the prompt vectors ever learn."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PromptedText:
    """Encodes texts with `prompts` ([n, hidden]) prepended inside `model`'s text tower."""

    def __init__(self, model, tokenizer, prompts: torch.Tensor):
        self.model, self.tokenizer, self.prompts = model, tokenizer, prompts
        cfg = model.config.text_config
        self.n = int(prompts.shape[0])
        if prompts.ndim != 2 or prompts.shape[1] != cfg.hidden_size:
            raise VlmbiasError(f"prompt vectors of shape {tuple(prompts.shape)} do not fit this model's text tower "
                               f"(hidden size {cfg.hidden_size})")
        self.max_length = int(cfg.max_position_embeddings) - self.n
        if self.max_length < 3:
            raise VlmbiasError(f"{self.n} prompt tokens leave no room for text in {cfg.max_position_embeddings} positions")
        eos = model.text_model.eos_token_id
        self.placeholder = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
        if self.placeholder == eos:
            raise VlmbiasError("the tokenizer's start token equals the end-of-text token; cannot place prompts")

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        toks = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")
        return {"input_ids": toks["input_ids"], "attention_mask": toks["attention_mask"]}

    @contextmanager
    def _hooked(self):
        emb, n, prompts = self.model.text_model.embeddings, self.n, self.prompts

        def hook(module, args, kwargs, output):
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            text = ids[:, n:]
            pos = module.position_embedding(module.position_ids[:, : text.shape[1]])
            lead = prompts.to(output.dtype).unsqueeze(0).expand(len(ids), -1, -1)
            return torch.cat([lead, module.token_embedding(text) + pos], dim=1)

        handle = emb.register_forward_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, toks: dict[str, torch.Tensor], idx=None, device: str = "cpu") -> torch.Tensor:
        ids, mask = toks["input_ids"], toks["attention_mask"]
        if idx is not None:
            ids, mask = ids[idx], mask[idx]
        width = int(mask.sum(1).max())  # right padding: trim columns no row uses
        ids, mask = ids[:, :width], mask[:, :width]
        lead = torch.full((len(ids), self.n), self.placeholder, dtype=ids.dtype)
        ids = torch.cat([lead, ids], 1).to(device)
        mask = torch.cat([torch.ones_like(lead), mask], 1).to(device)
        with self._hooked():
            return features(self.model.get_text_features(input_ids=ids, attention_mask=mask))

    def encode_texts(self, texts: list[str], device: str = "cpu") -> torch.Tensor:
        return self.encode(self.tokenize(texts), device=device)


# --------------------------------------------------------------------------- use

def load_prompts(out_dir) -> tuple[torch.Tensor, dict]:
    """The saved prompt vectors ([n_tokens, hidden]) and their metadata."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not (out_dir / META).is_file() or not (out_dir / WEIGHTS).is_file():
        raise VlmbiasError(f"{out_dir} is not a trained prompt-array directory (needs {META} and {WEIGHTS})")
    meta = json.loads((out_dir / META).read_text())
    tensors = load_file(str(out_dir / WEIGHTS))
    if "prompts" not in tensors:
        raise VlmbiasError(f"{out_dir / WEIGHTS} holds no 'prompts' tensor")
    return tensors["prompts"].float(), meta
