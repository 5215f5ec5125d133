"""Model quality kept? Zero-shot attribute accuracy and caption retrieval, to show the cost of a mitigation.

A method that "removes bias" by breaking the model must show it here:
- zero-shot attribute classification on the audited dataset: each image is assigned the class
  whose prompt ("a photo of a man" / "a photo of a woman") is most similar; accuracy with a
  Wilson 95% interval;
- caption retrieval on a held-out image-caption set (the calibration world's held-out corpus):
  precision@k of text-to-image retrieval (share of the top-k images whose concept matches the
  caption's; "any of the relevant images", since many images share a concept), and image-to-text
  concept accuracy (each image's nearest concept caption).
Only held-out images that show their concept's visual evidence are used for caption retrieval:
without evidence nothing in the image identifies the concept.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.audit.embed import embed_image_files
from vlmbias.audit.metrics import proportion_ci
from vlmbias.audit.models import load_encoder
from vlmbias.imagegate import DEFAULT_MAX_PIXELS
from vlmbias.io import parse_json_arg, read_npy, read_table, run_cli, write_table
from vlmbias.mitigate.debias import DEFAULT_GROUP_WORDS

log = logging.getLogger(__name__)
COLUMNS = ["model", "metric", "attribute", "value", "low", "high", "n"]


def _row(model, metric, attribute, hits: np.ndarray) -> dict:
    n, k = len(hits), int(np.sum(hits))
    low, high = proportion_ci(k, n) if n else (np.nan, np.nan)
    return {"model": model, "metric": metric, "attribute": attribute, "value": k / n if n else np.nan,
            "low": float(low), "high": float(high), "n": n}


def zero_shot_accuracy(encoder, image_emb: np.ndarray, labels: pd.Series, prompts: dict[str, str]) -> np.ndarray:
    """Per-image correctness of nearest-prompt classification."""
    classes = list(prompts)
    text = encoder.encode_texts([prompts[c] for c in classes])
    pred = np.asarray(classes, dtype=object)[np.argmax(image_emb @ text.T, axis=1)]
    return pred == labels.to_numpy()


def caption_precision(image_emb: np.ndarray, image_concepts: np.ndarray, caption_emb: np.ndarray,
                      caption_concepts: np.ndarray, k: int) -> np.ndarray:
    """Per caption: share of its top-k images that show its concept."""
    k = min(k, len(image_emb))
    top = np.argsort(-(caption_emb @ image_emb.T), axis=1, kind="stable")[:, :k]
    return (image_concepts[top] == caption_concepts[:, None]).mean(axis=1)


def evaluate(encoder, model_name: str, image_emb: np.ndarray, labels: pd.DataFrame, attributes: list[str],
             template: str, corpus: pd.DataFrame | None, k: int, corpus_emb: np.ndarray | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    rows = []
    for attr in attributes:
        words = DEFAULT_GROUP_WORDS.get(attr)
        if words is None:
            raise VlmbiasError(f"quality: no prompt words for attribute {attr!r}")
        hits = zero_shot_accuracy(encoder, image_emb, labels[attr], {c: template.format(w) for c, w in words.items()})
        rows.append(_row(model_name, "zero_shot_accuracy", attr, hits))
    if corpus is not None and len(corpus):
        if corpus_emb is None:
            corpus_emb, kept, bad = embed_image_files(encoder, corpus["path"].tolist(), progress=False,
                                                      max_pixels=max_pixels)
            if bad:
                raise VlmbiasError(f"quality: {len(bad)} held-out images could not be read; first: "
                                   f"{corpus['path'].iat[bad[0][0]]}: {bad[0][1]}")
        captions = corpus.drop_duplicates("caption")
        cap_emb = encoder.encode_texts(captions["caption"].tolist())
        prec = caption_precision(corpus_emb, corpus["concept"].to_numpy(), cap_emb, captions["concept"].to_numpy(), k)
        rows.append({"model": model_name, "metric": f"caption_precision@{k}", "attribute": "",
                     "value": float(prec.mean()), "low": float(np.quantile(prec, 0.025)),
                     "high": float(np.quantile(prec, 0.975)), "n": len(prec)})
        concepts = sorted(corpus["concept"].unique())
        names = captions.groupby("concept")["caption"].first()
        concept_text = encoder.encode_texts([names[c] for c in concepts])
        pred = np.asarray(concepts, dtype=object)[np.argmax(corpus_emb @ concept_text.T, axis=1)]
        rows.append(_row(model_name, "concept_accuracy", "", pred == corpus["concept"].to_numpy()))
    return pd.DataFrame(rows, columns=COLUMNS)


def heldout_corpus(world_dir: str) -> pd.DataFrame:
    """Held-out, evidence-bearing, English concept captions of the calibration world."""
    from vlmbias.world.generate import load_corpus

    c = load_corpus(world_dir)
    return c[(c["split"] == "heldout") & c["evidence"].astype(bool) & c["concept"].notna()
             & (c["lang"] == "en")].reset_index(drop=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.quality", description=__doc__.splitlines()[0])
    p.add_argument("--model-json", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--images-npy", required=True)
    p.add_argument("--images-table", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--attributes", nargs="+", default=["gender", "race"])
    p.add_argument("--template", default="a photo of a {}")
    p.add_argument("--world", help="calibration world directory: adds caption retrieval on its held-out corpus")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    encoder = load_encoder(parse_json_arg(a.model_json, "--model-json"), a.device)
    rows = read_table(a.images_table)
    labels = read_table(a.manifest).set_index("image_id").loc[rows["image_id"]].reset_index()
    corpus = heldout_corpus(a.world) if a.world else None
    table = evaluate(encoder, a.model_name, read_npy(a.images_npy), labels, a.attributes, a.template, corpus, a.k,
                     max_pixels=a.max_pixels)
    write_table(table, a.out)
    for r in table.itertuples():
        log.info("%s %s %s: %.3f (%.3f-%.3f, n=%d)", r.model, r.metric, r.attribute, r.value, r.low, r.high, r.n)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
