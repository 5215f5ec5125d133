"""BendVLM's fitting step: embed a method's labelled reference images once with the base model.

The transform itself (Gerych et al., NeurIPS 2024; both steps, defaults and sources) lives in
`vlmbias.encoders.bendvlm`, where the audit loads it from the folder this module writes:
`reference.npy` (the images' embeddings) and `reference.parquet` (their ids and attribute labels).

Rule `bendvlm_reference` (mitigate.smk): the labelled reference images are a labelled dataset that
is not the audited one (the method's `reference`, e.g. FairFace's train split when FairFace's
validation split is audited: every image of it with the attributes labelled; in the default run the
calibration world's `reference.csv`). A reference set with a `concept` column gives only its rows
of the FITTING concepts (and of no concept), so that no held-out concept is ever seen.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from vlmbias import VlmbiasError
from vlmbias.encoders.bendvlm import REFERENCE_NPY, REFERENCE_TABLE

log = logging.getLogger(__name__)


def fitting_concept_rows(rows: pd.DataFrame, concepts: Sequence[str] | None, what: str) -> pd.DataFrame:
    """A fitting set that carries a `concept` column keeps the rows of the fitting `concepts` and the
    concept-free ones (empty concept); a held-out concept's rows are dropped (and counted in the log).
    Without a `concept` column, or without `concepts`, the rows are returned as they are."""
    if concepts is None or "concept" not in rows.columns:
        return rows
    concept = rows["concept"].fillna("").astype(str).str.strip()
    keep = concept.eq("") | concept.isin([str(c) for c in concepts])
    if not keep.all():
        log.info("%s: %d of %d rows belong to a concept that is not fitted on (held out) and are left out",
                 what, int((~keep).sum()), len(rows))
    return rows[keep].reset_index(drop=True)


def dataset_rows(manifest: pd.DataFrame, attributes: Sequence[str], name: str = "the reference set") -> pd.DataFrame:
    """A labelled dataset's images usable as references: every attribute labelled (unlabelled rows dropped)."""
    missing = [a for a in attributes if a not in manifest.columns]
    if missing:
        raise VlmbiasError(f"BendVLM references: {name} has no {missing} labels (it has {list(manifest.columns)})")
    labelled = manifest[list(attributes)].notna() & manifest[list(attributes)].astype(str).ne("")
    rows = manifest[labelled.all(axis=1)]
    if rows.empty:
        raise VlmbiasError(f"BendVLM references: {name} has no image with every attribute {list(attributes)} labelled")
    return rows.reset_index(drop=True)


def main(argv=None) -> None:
    import argparse
    from pathlib import Path

    from vlmbias.audit.embed import embed_image_files
    from vlmbias.encoders.models import load_encoder
    from vlmbias.imagegate import DEFAULT_MAX_PIXELS
    from vlmbias.io import parse_json_arg, write_npy, write_table

    p = argparse.ArgumentParser(prog="python -m vlmbias.mitigate.bendvlm",
                                description="Embed BendVLM's reference images (fitting concepts only).")
    p.add_argument("--model-json", required=True, help="the base model's config block as JSON")
    p.add_argument("--reference-json", required=True,
                   help="the reference dataset's config block as JSON (a labelled dataset)")
    p.add_argument("--spec-json", required=True,
                   help='{"concepts": [fitting concepts; a concept column keeps them], "attributes": [...]}')
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    spec = parse_json_arg(a.spec_json, "--spec-json")
    attributes = list(spec.get("attributes") or ["gender"])
    from vlmbias.audit.data import build_manifest

    ref = parse_json_arg(a.reference_json, "--reference-json")
    name = f"reference dataset {ref.get('root', ref.get('type'))}"
    manifest = fitting_concept_rows(build_manifest(ref, ref.get("max_missing_fraction", 0.0))[0],
                                    spec.get("concepts"), f"BendVLM references ({name})")
    rows = dataset_rows(manifest, attributes, name)
    paths = rows["path"].tolist()
    columns = ["image_id", *(["concept"] if "concept" in rows.columns else []), *attributes]
    encoder = load_encoder(parse_json_arg(a.model_json, "--model-json"), a.device)
    emb, kept, bad = embed_image_files(encoder, paths, progress=False, num_workers=0, max_pixels=a.max_pixels)
    if bad:
        raise VlmbiasError(f"BendVLM references: {len(bad)} image(s) could not be read; first: {bad[0][1]}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_npy(emb, str(out / REFERENCE_NPY))
    write_table(rows.loc[kept, columns].reset_index(drop=True), str(out / REFERENCE_TABLE))


if __name__ == "__main__":
    from vlmbias.io import run_cli

    raise SystemExit(run_cli(main))
