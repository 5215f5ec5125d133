"""Model quality kept? Zero-shot attribute accuracy and caption retrieval, to show the cost of a mitigation.

A method that "removes bias" by breaking the model must show it here:
- zero-shot attribute classification on the audited dataset: each image is assigned the class
  whose prompt ("a photo of a man" / "a photo of a woman") is most similar; accuracy with a
  Wilson 95% interval;
- caption retrieval on a caption set (`mitigation.captions`, dataset type captions): recall@k as
  CLIP_benchmark reports it, both directions (`caption_retrieval`);
- concept-level caption retrieval, when the caption set labels each image's `concept` (the
  calibration world's held-out caption set does): precision@k of text-to-image retrieval (share of
  the top-k images whose concept matches the caption's), recall@k (share of captions with at least
  one image of their concept in the top k: the usual R@k, "any of the relevant images", since many
  images share a concept), and image-to-text concept accuracy (each image's nearest concept
  caption). One caption per image counts here (its first row); recall@k above uses them all;
- explicitly attributed queries ("a photo of a female nurse", one per class of each attribute and
  concept of the mitigation split; words `encoders.projection.PAIR_WORDS`): `attributed_query_share@k` is the
  share of the labelled images among each query's first k ranks on the audited dataset that belong
  to the named class, pooled over the queries (Wilson interval over the pooled items; chance is the
  dataset's share of the class). A method must keep these correct while it debiases neutral queries.
The world's held-out caption set holds only images that show their concept's visual evidence:
without evidence nothing in the image identifies the concept.

Held-out protocol: caption and attributed-query metrics are given per `split` of the
concept: `fitting` / `held_out` (the mitigation split, `--split`), `other` (concepts the
audit does not ask about) and `all`; zero-shot rows have split `all`. A text-side method's
transform (`--transform-json`: the `projection`, `saner` or `bendvlm` block of its query
transform) is applied to every text quality encodes, zero-shot prompts included, so that a
transform that breaks attributed queries ("a photo of a woman") shows it here. BendVLM is per
query: each text is bent with its own concept (a caption's concept, a zero-shot prompt's group
word, an attributed query's concept) and the method's fitting-split reference images, and a text
that names the bent attribute is kept unchanged, exactly as the audit treats queries that name it.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.audit.embed import embed_image_files
from vlmbias.audit.metrics import labelled, proportion_ci
from vlmbias.audit.queries import strip_article
from vlmbias.audit.retrieve import top_k
from vlmbias.audit.zeroshot import class_embeddings, predict
from vlmbias.encoders.bendvlm import apply_transform, load_reference
from vlmbias.encoders.models import load_encoder
from vlmbias.encoders.projection import DEFAULT_GROUP_WORDS, PAIR_WORDS, apply_projection, projection_for
from vlmbias.encoders.saner import load_saner
from vlmbias.imagegate import DEFAULT_MAX_PIXELS
from vlmbias.io import check_embeddings, parse_json_arg, read_table, run_cli, write_table

log = logging.getLogger(__name__)
COLUMNS = ["model", "metric", "attribute", "split", "value", "low", "high", "n"]


def _row(model, metric, attribute, hits: np.ndarray, split: str = "all") -> dict:
    n, k = len(hits), int(np.sum(hits))
    low, high = proportion_ci(k, n) if n else (np.nan, np.nan)
    return {"model": model, "metric": metric, "attribute": attribute, "split": split,
            "value": k / n if n else np.nan, "low": float(low), "high": float(high), "n": n}


class TransformedText:
    """An encoder whose text embeddings pass through a text-side method's transform. BendVLM needs
    each text's concept and the attribute it names: `describe` registers them (undescribed texts
    get their article-stripped text as concept and name no attribute)."""

    def __init__(self, encoder, transform: dict | None, fitting: list[str] | None = None):
        self.encoder, self.fn, self.bend, self.about = encoder, None, None, {}
        transform = transform or {}
        if transform.get("bendvlm"):
            self.bend = (transform["bendvlm"], load_reference(transform["bendvlm"]["reference"]))
        elif transform.get("projection"):
            spec = transform["projection"]
            p = projection_for(encoder, spec, spec.get("concepts") or fitting or [])
            self.fn = lambda x: apply_projection(x, p)
        elif transform.get("saner"):
            self.fn = load_saner(transform["saner"]["layer"])

    def describe(self, texts, concepts, names_attribute: str | None = None) -> None:
        for t, c in zip(texts, concepts):
            self.about[t] = (c, names_attribute)

    def encode_texts(self, texts):
        texts = list(texts)
        out = self.encoder.encode_texts(texts)
        if self.bend is not None:
            info = [self.about.get(t, (None, None)) for t in texts]
            table = pd.DataFrame({"concept": [c if isinstance(c, str) and c.strip() else strip_article(t)
                                              for t, (c, _) in zip(texts, info)],
                                  "names_attribute": [i[1] for i in info]})
            out = apply_transform(self.encoder, out, table, self.bend[0], reference=self.bend[1])
        return out if self.fn is None else self.fn(out)

    def __getattr__(self, name):
        return getattr(self.encoder, name)


def describe(encoder, texts, concepts, names_attribute: str | None = None) -> None:
    """Tell a BendVLM-transformed encoder what each text is about (no-op for other encoders)."""
    if isinstance(encoder, TransformedText):
        encoder.describe(texts, concepts, names_attribute)


def attributed_queries(concepts, attribute: str, template: str) -> pd.DataFrame:
    """One explicitly attributed query per (concept, class): "a photo of a female nurse"."""
    words = PAIR_WORDS.get(attribute)
    if words is None:
        raise VlmbiasError(f"quality: no attribute words for {attribute!r}")
    return pd.DataFrame([{"concept": c, "class": cls, "text": template.format(f"{w} {c}")}
                         for c in concepts for cls, w in words.items()])


def attributed_hits(encoder, image_emb: np.ndarray, labels: pd.Series, queries: pd.DataFrame, k: int,
                    attribute: str) -> list[np.ndarray]:
    """Per attributed query: for each labelled image among its first k ranks, whether it belongs to
    the named class (ties by image row)."""
    describe(encoder, queries["text"], queries["concept"], attribute)
    emb = encoder.encode_texts(queries["text"].tolist())
    top = top_k(image_emb, emb, k, "exact")[1]
    lab = labelled(labels.reset_index(drop=True)).to_numpy(dtype=object)
    out = []
    for row, cls in zip(top, queries["class"]):
        got = lab[row]
        got = got[pd.notna(got)]
        out.append(got == cls)
    return out


def zero_shot_accuracy(encoder, image_emb: np.ndarray, labels: pd.Series, prompts: dict[str, str]) -> np.ndarray:
    """Per-image correctness of nearest-prompt classification (the zero-shot audit's classifier)."""
    classes, text = class_embeddings(encoder, {c: [t] for c, t in prompts.items()}, "quality")
    return np.asarray(classes, dtype=object)[predict(image_emb, text)] == labels.to_numpy()


def caption_precision(image_emb: np.ndarray, image_concepts: np.ndarray, caption_emb: np.ndarray,
                      caption_concepts: np.ndarray, k: int) -> np.ndarray:
    """Per caption: share of its top-k images that show its concept."""
    top = top_k(image_emb, caption_emb, k, "exact")[1]
    return (image_concepts[top] == caption_concepts[:, None]).mean(axis=1)


def evaluate(encoder, model_name: str, image_emb: np.ndarray, labels: pd.DataFrame, attributes: list[str],
             template: str, corpus: pd.DataFrame | None, k: int, corpus_emb: np.ndarray | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, splits: dict[str, str] | None = None) -> pd.DataFrame:
    """splits: {concept: fitting | held_out}; caption metrics are then also given per split."""
    rows = []
    for attr in attributes:
        words = DEFAULT_GROUP_WORDS.get(attr)
        if words is None:
            raise VlmbiasError(f"quality: no prompt words for attribute {attr!r}")
        prompts = {c: template.format(w) for c, w in words.items()}
        describe(encoder, prompts.values(), words.values(), attr)  # each prompt names attr; its concept: the word
        hits = zero_shot_accuracy(encoder, image_emb, labels[attr], prompts)
        rows.append(_row(model_name, "zero_shot_accuracy", attr, hits))
        if splits:
            queries = attributed_queries(sorted(splits), attr, template)
            per_query = attributed_hits(encoder, image_emb, labels[attr], queries, k, attr)
            which = queries["concept"].map(splits).to_numpy()
            for split in ["all", *sorted(set(which))]:
                pick = [h for h, w in zip(per_query, which) if split in ("all", w)]
                rows.append(_row(model_name, f"attributed_query_share@{k}", attr,
                                 np.concatenate(pick) if pick else np.zeros(0, bool), split))
    if corpus is not None and len(corpus):
        if corpus_emb is None:
            corpus_emb = _embed_every_image(encoder, corpus["path"].tolist(), "held-out", max_pixels)
        captions = corpus.drop_duplicates("caption")
        describe(encoder, captions["caption"], captions["concept"])
        cap_emb = encoder.encode_texts(captions["caption"].tolist())
        prec = caption_precision(corpus_emb, corpus["concept"].to_numpy(), cap_emb, captions["concept"].to_numpy(), k)
        found = prec > 0  # recall@k: an image of the caption's concept among its top k
        concepts = sorted(corpus["concept"].unique())
        names = captions.groupby("concept")["caption"].first()
        concept_text = encoder.encode_texts([names[c] for c in concepts])
        pred = np.asarray(concepts, dtype=object)[np.argmax(corpus_emb @ concept_text.T, axis=1)]
        hits = pred == corpus["concept"].to_numpy()
        cap_split = captions["concept"].map(lambda c: (splits or {}).get(c, "other")).to_numpy()
        img_split = corpus["concept"].map(lambda c: (splits or {}).get(c, "other")).to_numpy()
        for which in ["all", *sorted(set(cap_split))] if splits else ["all"]:
            pick = np.ones(len(prec), bool) if which == "all" else cap_split == which
            sel = prec[pick]
            rows.append({"model": model_name, "metric": f"caption_precision@{k}", "attribute": "", "split": which,
                         "value": float(sel.mean()), "low": float(np.quantile(sel, 0.025)),
                         "high": float(np.quantile(sel, 0.975)), "n": len(sel)})
            rows.append(_row(model_name, f"caption_recall@{k}", "", found[pick], which))
            rows.append(_row(model_name, "concept_accuracy", "", hits if which == "all" else hits[img_split == which],
                             which))
    return pd.DataFrame(rows, columns=COLUMNS)


def _embed_every_image(encoder, paths: list[str], what: str, max_pixels: int) -> np.ndarray:
    """Embeddings of every image, in order; quality is measured on all of them or not at all."""
    emb, _, bad = embed_image_files(encoder, paths, progress=False, max_pixels=max_pixels)
    if bad:
        raise VlmbiasError(f"quality: {len(bad)} {what} images could not be read; first: "
                           f"{paths[bad[0][0]]}: {bad[0][1]}")
    return emb


RECALL_KS = (1, 5, 10)  # CLIP_benchmark's default recall_k_list


def caption_retrieval(encoder, model_name: str, images: pd.DataFrame, captions: pd.DataFrame,
                      image_emb: np.ndarray | None = None, ks=RECALL_KS,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> list[dict]:
    """Recall@k of caption <-> image retrieval on a caption set, as CLIP_benchmark reports it:
    `image_retrieval_recall@k` (text to image: a caption hits when its own image is among the k
    images most similar to it) and `text_retrieval_recall@k` (image to text: an image hits when any
    of its captions is among the k captions most similar to it); Wilson intervals over captions /
    images. images: image_id, path (one row per image); captions: image_id, caption."""
    if image_emb is None:
        image_emb = _embed_every_image(encoder, images["path"].tolist(), "caption-set", max_pixels)
    row_of = {im: r for r, im in enumerate(images["image_id"])}
    if not set(captions["image_id"]) <= set(row_of):
        raise VlmbiasError("quality: the caption set has captions of images it does not list")
    owner = captions["image_id"].map(row_of).to_numpy()
    text_emb = encoder.encode_texts(captions["caption"].tolist())
    rows = []
    for k in ks:
        _, t2i = top_k(image_emb, text_emb, k)
        rows.append(_row(model_name, f"image_retrieval_recall@{k}", "", (t2i == owner[:, None]).any(axis=1)))
        _, i2t = top_k(text_emb, image_emb, k)
        rows.append(_row(model_name, f"text_retrieval_recall@{k}", "",
                         (owner[i2t] == np.arange(len(image_emb))[:, None]).any(axis=1)))
    return rows


def concept_corpus(images: pd.DataFrame, captions: pd.DataFrame) -> pd.DataFrame | None:
    """A caption set's images with their concept and first caption (one row per image, in the
    images' order), the table of the concept-level metrics; None when the set labels no concept."""
    if "concept" not in images.columns:
        return None
    first = captions.drop_duplicates("image_id").set_index("image_id")["caption"]
    out = images[["image_id", "path", "concept"]].assign(caption=images["image_id"].map(first).to_numpy())
    return out[out["concept"].astype(str) != ""]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.quality", description=__doc__.splitlines()[0])
    p.add_argument("--model-json", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--images-npy", required=True)
    p.add_argument("--images-table", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--attributes", nargs="+", default=["gender", "race"])
    p.add_argument("--template", default="a photo of a {}")
    p.add_argument("--captions-json", help="a caption set's config block as JSON: adds recall@k of caption retrieval, "
                   "and concept-level retrieval when the set labels a concept")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="images.max_pixels")
    p.add_argument("--split", help="split.csv of the mitigation split: caption metrics per concept split")
    p.add_argument("--transform-json", default="{}", help="a text-side method's query transform block")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    splits = read_table(a.split).drop_duplicates("concept").set_index("concept")["split"].to_dict() if a.split else None
    fitting = sorted(c for c, v in (splits or {}).items() if v == "fitting")
    encoder = TransformedText(load_encoder(parse_json_arg(a.model_json, "--model-json"), a.device),
                              parse_json_arg(a.transform_json, "--transform-json"), fitting)
    images, rows, _ = check_embeddings(a.images_npy, a.images_table, "embed_images", manifest=a.manifest, mmap=False)
    labels = read_table(a.manifest).set_index("image_id").loc[rows["image_id"]].reset_index()
    corpus = corpus_emb = captions = None
    if a.captions_json:
        from vlmbias.audit.data import caption_set

        cap_images, captions, _, _ = caption_set(parse_json_arg(a.captions_json, "--captions-json"))
        cap_emb = _embed_every_image(encoder, cap_images["path"].tolist(), "caption-set", a.max_pixels)
        corpus = concept_corpus(cap_images, captions)
        if corpus is not None:
            corpus_emb = cap_emb[corpus.index.to_numpy()]
            corpus = corpus.reset_index(drop=True)
    attributes = [x for x in a.attributes if x in labels.columns]  # a dataset labels what it labels
    if len(attributes) < len(a.attributes):
        log.info("quality: the dataset has no %s labels; measured on %s only",
                 sorted(set(a.attributes) - set(attributes)), attributes)
    table = evaluate(encoder, a.model_name, images, labels, attributes, a.template, corpus, a.k,
                     corpus_emb=corpus_emb, max_pixels=a.max_pixels, splits=splits)
    if captions is not None:
        table = pd.concat([table, pd.DataFrame(caption_retrieval(encoder, a.model_name, cap_images, captions,
                                                                 image_emb=cap_emb), columns=COLUMNS)],
                          ignore_index=True)
    write_table(table, a.out)
    for r in table.itertuples():
        log.info("%s %s %s [%s]: %.3f (%.3f-%.3f, n=%d)", r.model, r.metric, r.attribute, r.split, r.value, r.low,
                 r.high, r.n)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
