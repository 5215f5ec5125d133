"""A CLIP byte-level BPE tokenizer learned from a corpus (vocab.json + merges.txt, and the
tokenizer.json transformers writes): vocab = the 256 byte symbols, the same with `</w>`, the learned
merges, `<|startoftext|>`, `<|endoftext|>`. Chinese and Arabic work through bytes, as in CLIP.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from vlmbias import VlmbiasError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


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


def write_tokenizer_files(directory: Path, merges: list[tuple[str, str]]) -> None:
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
        write_tokenizer_files(Path(d), [])
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
    write_tokenizer_files(out_dir, learn_bpe(texts, n_merges))
    tok = _load_tokenizer(out_dir, max_length)
    tok.save_pretrained(str(out_dir))
    return tok


def check_round_trip(tok, texts: list[str]) -> None:
    """CLIP's tokenizer lower-cases and re-spaces punctuation; compare what must survive."""
    for t in texts:
        back = tok.decode(tok(t)["input_ids"], skip_special_tokens=True)
        if "".join(back.split()) != "".join(t.lower().split()):
            raise VlmbiasError(f"tokenizer does not round-trip {t!r} (got {back!r})")
