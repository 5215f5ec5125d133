"""A SANER-style debiasing layer on the text embedding (Hirota et al., ICLR 2025, "SANER:
Annotation-free Societal Attribute Neutralizer for Debiasing CLIP"). Images are untouched.

The paper's pipeline, as implemented here:
1. Attribute neutralisation: attribute words of a caption are replaced by neutral ones ("a photo
   of a man cooking" -> "a photo of a person cooking"; "a male nurse" -> "a nurse"; "his" ->
   "their"); `neutralize` does it with a word list (`GENDER_LEXICON`) and also writes the
   caption's attribute-specific versions, one per group ("a photo of a woman cooking", ...).
   Captions without an attribute word carry no training signal for the debiasing loss and are
   left out (they may be passed as `keep`, see below).
2. Feature modification: a small residual MLP on the (frozen) text embedding,
   f(x) = x + W2 act(W1 x + b1) + b2, with W2, b2 initialised to zero so the untrained layer is
   the identity. Applied to every query at test time; it has to learn to change only
   attribute-neutral ones.
3. Loss L = alpha L_deb + beta L_recon + gamma L_cont (the paper's form):
   - L_deb (attribute equidistance, annotation-free): the debiased embedding of a neutralised
     caption should be equally similar to the embeddings of all of its attribute-specific
     versions: mean over groups of |cos(f(n), v_g) - mean_g' cos(f(n), v_g')|.
   - L_recon (keep what is explicit): the attribute-specific versions (the original caption is
     one of them) and any `keep` embeddings must pass unchanged: mean of 1 - cos(f(x), x). This
     is what keeps "a female doctor" female.
   - L_cont (keep meaning): CLIP's contrastive loss (`training.contrastive_loss`) between the
     debiased neutral caption and the image it describes; identical neutral captions are
     positives of one another.

Defaults (`DEFAULTS`): the loss form and the zero-initialised residual layer follow the paper's
description; the numbers (hidden width = embedding size, alpha = beta = gamma = 1, AdamW lr 1e-3,
batch 64, 20 epochs, logit scale 100 = CLIP's trained value exp(4.6052)) are this project's
choices, not the paper's, and should be tuned on held-out data.

Output of `train_saner` in `out_dir`: `saner.safetensors` (the layer's weights),
`saner.json` (dim, hidden, groups, spec, steps, losses summary) written last, and `losses.csv`.
`vlmbias.encoders.saner.load_saner(out_dir)` returns a callable [Q, d] -> [Q, d] (unit rows), the text-side transform.
Training is seeded and deterministic on CPU: same inputs, spec and thread count, same bytes.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vlmbias import VlmbiasError, __version__
from vlmbias.encoders.base import embedding_array
from vlmbias.encoders.saner import META, WEIGHTS, SanerLayer
from vlmbias.io import write_table
from vlmbias.training import contrastive_loss, deterministic, is_number, save_trained, shuffled_batches, train_steps

log = logging.getLogger(__name__)

DEFAULTS: dict = {
    "hidden": None,        # width of the hidden layer; None = the embedding size (ours)
    "alpha": 1.0,          # weight of L_deb (ours)
    "beta": 1.0,           # weight of L_recon (ours)
    "gamma": 1.0,          # weight of L_cont (ours); 0 trains without images
    "logit_scale": 100.0,  # contrastive temperature: CLIP's trained scale
    "lr": 1e-3,
    "weight_decay": 0.01,  # torch.optim.AdamW's default
    "batch_size": 64,
    "epochs": 20,
    "max_steps": None,
    "seed": 0,
}

# One slot per attribute word family: (neutral replacement, {group: word}). "" drops the word.
GENDER_LEXICON: list[tuple[str, dict[str, str]]] = [
    ("person", {"Male": "man", "Female": "woman"}),
    ("people", {"Male": "men", "Female": "women"}),
    ("child", {"Male": "boy", "Female": "girl"}),
    ("children", {"Male": "boys", "Female": "girls"}),
    ("person", {"Male": "gentleman", "Female": "lady"}),
    ("people", {"Male": "gentlemen", "Female": "ladies"}),
    ("", {"Male": "male", "Female": "female"}),
    ("they", {"Male": "he", "Female": "she"}),
    ("them", {"Male": "him", "Female": "her"}),
    ("their", {"Male": "his", "Female": "her"}),
    ("themselves", {"Male": "himself", "Female": "herself"}),
    ("parent", {"Male": "father", "Female": "mother"}),
    ("child", {"Male": "son", "Female": "daughter"}),
    ("spouse", {"Male": "husband", "Female": "wife"}),
    ("sibling", {"Male": "brother", "Female": "sister"}),
]
_WORD = re.compile(r"[A-Za-z]+")


# --------------------------------------------------------------------------- captions

def _index(lexicon) -> tuple[list[str], dict[str, int]]:
    if not lexicon:
        raise VlmbiasError("SANER: the attribute lexicon is empty")
    groups = list(lexicon[0][1])
    if len(groups) < 2:
        raise VlmbiasError(f"SANER: the lexicon needs at least 2 groups, got {groups}")
    index: dict[str, int] = {}
    for i, (_, words) in enumerate(lexicon):
        if list(words) != groups:
            raise VlmbiasError(f"SANER: every lexicon entry must list the groups {groups}, got {list(words)}")
        for w in words.values():
            index.setdefault(w.lower(), i)  # "her" is both object and possessive: the first entry wins
    return groups, index


def neutralize(caption: str, lexicon=GENDER_LEXICON) -> tuple[str, dict[str, str]] | None:
    """(neutral caption, {group: attribute-specific caption}) or None when no attribute word occurs.

    >>> neutralize("A man cooking")
    ('A person cooking', {'Male': 'A man cooking', 'Female': 'A woman cooking'})
    """
    groups, index = _index(lexicon)
    if not isinstance(caption, str):
        raise VlmbiasError(f"SANER: captions must be strings, got {caption!r}")
    hits = [(m.start(), m.end(), index[m.group().lower()]) for m in _WORD.finditer(caption)
            if m.group().lower() in index]
    if not hits:
        return None

    def render(pick) -> str:
        out, pos = [], 0
        for start, end, slot in hits:
            word = pick(slot)
            if word and caption[start].isupper():
                word = word[0].upper() + word[1:]
            out += [caption[pos:start], word]
            pos = end
        out.append(caption[pos:])
        return re.sub(r"\s{2,}", " ", "".join(out)).strip()

    return render(lambda s: lexicon[s][0]), {g: render(lambda s, g=g: lexicon[s][1][g]) for g in groups}


def saner_corpus(captions: Sequence[str], lexicon=GENDER_LEXICON) -> pd.DataFrame:
    """Training texts: one row per caption that names an attribute: `row` (its index in
    `captions`), `caption`, `neutral`, and `variant_<group>` per group."""
    captions = list(captions)
    if not captions:
        raise VlmbiasError("SANER: the caption list is empty")
    groups, index = _index(lexicon)
    rows = []
    for i, c in enumerate(captions):
        done = neutralize(c, lexicon)
        if done is not None:
            rows.append({"row": i, "caption": c, "neutral": done[0], **{f"variant_{g}": done[1][g] for g in groups}})
    if not rows:
        raise VlmbiasError(f"SANER: none of the {len(captions)} captions names an attribute (words such as "
                           f"{sorted(index)[:8]}); the debiasing loss needs captions that do")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- spec & inputs


def resolve_spec(spec: dict | None) -> dict:
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise VlmbiasError(f"unknown SANER spec key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **spec}
    for key in ("batch_size", "epochs"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1:
            raise VlmbiasError(f"SANER spec {key!r} must be an integer >= 1, got {s[key]!r}")
    for key in ("hidden", "max_steps"):
        if s[key] is not None and (not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1):
            raise VlmbiasError(f"SANER spec {key!r} must be null or an integer >= 1, got {s[key]!r}")
    if not isinstance(s["seed"], int) or isinstance(s["seed"], bool):
        raise VlmbiasError(f"SANER spec 'seed' must be an integer, got {s['seed']!r}")
    for key in ("lr", "logit_scale"):
        if not is_number(s[key]) or s[key] <= 0:
            raise VlmbiasError(f"SANER spec {key!r} must be a positive number, got {s[key]!r}")
    for key in ("alpha", "beta", "gamma", "weight_decay"):
        if not is_number(s[key]) or s[key] < 0:
            raise VlmbiasError(f"SANER spec {key!r} must be a number >= 0, got {s[key]!r}")
    if s["alpha"] == 0:
        raise VlmbiasError("SANER spec 'alpha' (the debiasing loss weight) must be > 0, or nothing is debiased")
    return s


# --------------------------------------------------------------------------- training

def train_saner(neutral, variants, out_dir, *, images=None, keep=None, groups: Sequence[str] | None = None,
                spec: dict | None = None, threads: int | None = 1, progress: bool = False) -> dict:
    """Train the debiasing layer on embeddings and save it to `out_dir`.

    neutral: [N, d] embeddings of neutralised captions. variants: [N, G, d], G >= 2, the
    embeddings of each caption's attribute-specific versions (group order = `groups`).
    images: [N, d] the embedding of the image each caption describes (needed when spec gamma > 0).
    keep: optional [M, d] embeddings of further texts to leave unchanged (captions with no
    attribute, attribute-explicit queries). Returns the metadata written to saner.json plus
    `out_dir`, `final_loss` and `losses` (the per-epoch DataFrame). threads: torch threads while
    training (one is fastest for a layer this small; more threads only spin on a busy machine).
    """
    s = resolve_spec(spec)
    n = embedding_array(neutral, "neutral caption embeddings", 2)
    if len(n) == 0:
        raise VlmbiasError("SANER: no neutral caption embeddings to train on")
    d = n.shape[1]
    v = embedding_array(variants, "attribute-specific caption embeddings", 3, d)
    if v.shape[0] != len(n):
        raise VlmbiasError(f"attribute-specific embeddings are given for {v.shape[0]} captions, there are {len(n)}")
    if v.shape[1] < 2:
        raise VlmbiasError(f"SANER needs at least 2 attribute-specific versions per caption, got {v.shape[1]}")
    groups = [f"group{i}" for i in range(v.shape[1])] if groups is None else [str(g) for g in groups]
    if len(groups) != v.shape[1] or len(set(groups)) != len(groups):
        raise VlmbiasError(f"groups {groups} must name the {v.shape[1]} attribute-specific versions, distinctly")
    img = None
    if s["gamma"] > 0:
        if images is None:
            raise VlmbiasError("SANER: the contrastive term (gamma > 0) needs the image embedding of each caption; "
                               "pass images=[N, d] or set gamma to 0")
        img = embedding_array(images, "image embeddings", 2, d)
        if len(img) != len(n):
            raise VlmbiasError(f"{len(img)} image embeddings for {len(n)} captions; give one per caption")
    k = None if keep is None else embedding_array(keep, "keep embeddings", 2, d)
    if k is not None and len(k) == 0:
        k = None

    with deterministic(threads, warn_only=True):
        layer, losses, steps = _train(n, v, img, k, s, progress)
    meta = {"dim": d, "hidden": s["hidden"] or d, "groups": groups, "spec": s, "n_train": len(n),
            "n_keep": 0 if k is None else len(k), "steps": int(steps), "vlmbias_version": __version__}
    _save(layer, losses, meta, Path(out_dir))
    final = float(losses["loss"].iloc[-1])
    log.info("wrote SANER layer to %s (%d steps, final loss %.4f)", out_dir, steps, final)
    return {**meta, "out_dir": str(out_dir), "final_loss": final, "losses": losses}


def _train(n: np.ndarray, v: np.ndarray, img: np.ndarray | None, keep: np.ndarray | None, s: dict, progress: bool):
    torch.manual_seed(s["seed"])
    d = n.shape[1]
    layer = SanerLayer(d, s["hidden"] or d)
    nt, vt = torch.from_numpy(n), torch.from_numpy(v)
    it = None if img is None else torch.from_numpy(img)
    kt = None if keep is None else torch.from_numpy(keep)
    # identical neutral captions are positives of one another in the contrastive term
    _, same = np.unique(n, axis=0, return_inverse=True)
    same = torch.from_numpy(same.reshape(-1).astype(np.int64))
    opt = torch.optim.AdamW(layer.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    keep_gen = torch.Generator().manual_seed(s["seed"] + 1)
    loader, total_steps = shuffled_batches(len(n), s["batch_size"], s["seed"], s["epochs"], s["max_steps"])

    def step(idx):
        fn = F.normalize(layer(nt[idx]), dim=-1)
        sims = torch.einsum("bd,bgd->bg", fn, F.normalize(vt[idx], dim=-1))
        comp = {"deb": (sims - sims.mean(1, keepdim=True)).abs().mean()}
        explicit = vt[idx].reshape(-1, d)
        if kt is not None:
            pick = torch.randint(len(kt), (len(idx),), generator=keep_gen)
            explicit = torch.cat([explicit, kt[pick]])
        comp["recon"] = (1 - F.cosine_similarity(layer(explicit), explicit, dim=-1)).mean()
        total = s["alpha"] * comp["deb"] + s["beta"] * comp["recon"]
        if it is not None:
            comp["cont"] = contrastive_loss(it[idx], fn, s["logit_scale"], same[idx])
            total = total + s["gamma"] * comp["cont"]
        return {"loss": total, **comp}

    layer.train()
    losses, steps = train_steps(step, lambda epoch: loader, opt, epochs=s["epochs"], total_steps=total_steps,
                                desc="saner", progress=progress)
    return layer.eval(), losses, steps


def _save(layer: SanerLayer, losses: pd.DataFrame, meta: dict, out_dir: Path) -> None:
    from safetensors.torch import save_file

    weights = {k: t.detach().contiguous() for k, t in layer.state_dict().items()}
    save_trained(out_dir, lambda folder: save_file(weights, str(folder / WEIGHTS)), losses, META, meta)


def train_saner_from_captions(encoder, captions: Sequence[str], image_embeddings, out_dir, *,
                              lexicon=GENDER_LEXICON, keep_captions: Sequence[str] | None = None,
                              spec: dict | None = None, threads: int | None = 1, progress: bool = False) -> dict:
    """Neutralise `captions`, encode every text with `encoder` (an `encoders.models.Encoder`), and
    train. image_embeddings: [len(captions), d], the image of each caption (rows of captions that
    name no attribute are skipped). keep_captions: texts to leave unchanged (e.g. captions with
    no person, or explicit queries). Returns `train_saner`'s result plus `corpus` (the texts)."""
    corpus = saner_corpus(captions, lexicon)
    groups = list(lexicon[0][1])
    images = None
    if image_embeddings is not None:
        images = np.asarray(image_embeddings)
        if images.ndim != 2 or len(images) != len(list(captions)):
            raise VlmbiasError(f"one image embedding per caption is needed: {len(list(captions))} captions, "
                               f"image embeddings of shape {images.shape}")
        images = images[corpus["row"].to_numpy()]
    neutral = encoder.encode_texts(corpus["neutral"].tolist())
    flat = encoder.encode_texts([t for g in groups for t in corpus[f"variant_{g}"]])
    variants = flat.reshape(len(groups), len(corpus), -1).transpose(1, 0, 2)
    keep = encoder.encode_texts(list(keep_captions)) if keep_captions else None
    out = train_saner(neutral, variants, out_dir, images=images, keep=keep, groups=groups, spec=spec,
                      threads=threads, progress=progress)
    return {**out, "corpus": corpus}


# --------------------------------------------------------------------------- the workflow's training set
# Rule `saner_train` (mitigate.smk): a caption set (dataset type captions) is used as it is: its
# captions that name an attribute word train the layer, captions that name a held-out concept are
# left out (`caption_set_rows`), and a set with a `concept` column gives only its rows of the
# fitting concepts and of no concept. The calibration world's own set is its `train_captions.csv`
# (docs/calibration-world.md).


def mentions(caption: str, concepts: Sequence[str]) -> bool:
    """Whether a caption names any of `concepts` as whole words ("a nurse at work" names nurse), case-insensitively."""
    text = f" {' '.join(_WORD.findall(caption.lower()))} "
    return any(f" {' '.join(_WORD.findall(c.lower()))} " in text for c in concepts if _WORD.search(c))


def caption_set_rows(images: pd.DataFrame, captions: pd.DataFrame, held_out: Sequence[str]) -> pd.DataFrame:
    """A caption set's training rows (image_id, path, caption, and its labels): every caption but those
    that name a held-out concept, so nothing the method is judged on is learnt from."""
    drop = captions["caption"].map(lambda c: mentions(c, held_out))
    if drop.any():
        log.info("SANER: %d of %d captions name a held-out concept and are left out", int(drop.sum()), len(captions))
    rows = captions[~drop].merge(images, on="image_id", how="inner", validate="many_to_one")
    if rows.empty:
        raise VlmbiasError("SANER: the caption set has no caption left once captions naming a held-out concept "
                           f"({list(held_out)}) are left out")
    return rows.reset_index(drop=True)


def main(argv=None) -> None:
    import argparse

    from vlmbias.audit.embed import embed_image_files
    from vlmbias.encoders.models import load_encoder
    from vlmbias.imagegate import DEFAULT_MAX_PIXELS
    from vlmbias.io import parse_json_arg, read_table, run_cli  # noqa: F401

    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.saner",
                                description="Train a SANER layer on a caption set.")
    p.add_argument("--model-json", required=True, help="the base model's config block as JSON")
    p.add_argument("--captions-json", required=True, help="a caption set's config block as JSON (dataset type captions)")
    p.add_argument("--concepts-json", required=True,
                   help='{"concepts": [fitting concepts; a concept column keeps them], "held_out": [held-out concepts]}')
    p.add_argument("--spec-json", required=True, help="SANER spec (DEFAULTS keys)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    spec = parse_json_arg(a.spec_json, "--spec-json")
    resolve_spec(spec)  # a bad spec fails before anything is embedded
    concepts = parse_json_arg(a.concepts_json, "--concepts-json")
    from vlmbias.audit.data import caption_set
    from vlmbias.mitigate.bendvlm import fitting_concept_rows

    images, captions, _, _ = caption_set(parse_json_arg(a.captions_json, "--captions-json"))
    rows = fitting_concept_rows(caption_set_rows(images, captions, concepts.get("held_out") or []),
                                concepts.get("concepts"), "SANER captions")
    columns = [c for c in rows.columns if c != "path"]
    encoder = load_encoder(parse_json_arg(a.model_json, "--model-json"), a.device)
    unique = rows.drop_duplicates("path")["path"].tolist()  # each image once, however many captions it has
    emb, kept, bad = embed_image_files(encoder, unique, progress=False, num_workers=0, max_pixels=a.max_pixels)
    if bad:
        raise VlmbiasError(f"SANER: {len(bad)} training image(s) could not be read; first: {bad[0][1]}")
    at = {unique[i]: r for r, i in enumerate(kept)}
    out = train_saner_from_captions(encoder, rows["caption"].tolist(), emb[[at[p] for p in rows["path"]]], a.out,
                                    spec=spec, threads=a.threads)
    write_table(rows[columns], Path(a.out) / "captions.csv")
    log.info("SANER trained on %d captions (%d naming a gender)", len(rows), out["n_train"])


if __name__ == "__main__":
    from vlmbias.io import run_cli

    raise SystemExit(run_cli(main))
