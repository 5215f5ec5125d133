"""The calibration world: a synthetic, seeded stand-in for web data + FairFace with a KNOWN planted bias.

No machine of this project can download CLIP weights or FairFace, so the default run builds a small
world in which every bias is planted on purpose and written down (`bias_table.csv`). A small CLIP is
trained on it (`vlmbias.world.model`) and the real audit must then find exactly the planted bias, and
none on the control concepts: the project's known-answer test.

Everything here is abstract. A "person" is a coloured shape on a plain background; the FairFace class
names are used only so the audit code runs unchanged:
- race   -> the hue of the central figure (7 arbitrary, evenly spaced hues, in a shuffled order),
- gender -> the figure's shape (a tall diamond or a wide ellipse of about equal area),
- age    -> the background's brightness (9 levels),
each with jitter and pixel noise. A concept with `figure: animal` is drawn as a four-legged shape
in its planted race's hue instead (not a person: no gender signature, gender left empty), the
known answer for zero-shot "non-human" labels. A concept (profession) leaves a visual "evidence" mark, a small
concept-specific 5x5 glyph in a random corner, on only `evidence_rate` of its corpus images; when the
mark is missing the only thing a caption co-occurs with is the demographic signature, which is how a
skewed corpus becomes a learned bias.

Layout of a generated world (`generate_world(spec, out_dir)`):
    corpus/<n>.jpg                 web corpus images (train + heldout splits)
    corpus.parquet (+ .csv)        image_id, path (relative to the world), caption, lang, concept,
                                   evidence, split, gender, race, age, names, scene, decoy, figure
                                   (person | animal; an animal's race is its hue, its gender
                                   null); concept is null for
                                   captions that name a group ("a photo of a woman"), whose `names`
                                   says which ("gender=Female", "gender=Male;race=Black"), and for
                                   the uninformative filler captions ("a photo of someone")
    fairface/val/<n>.jpg           the balanced test split, no evidence marks, FairFace layout
    fairface/fairface_label_val.csv   file, age, gender, race, service_test
    bias_table.csv                 concept, lang, attribute, class, planted (every concept/lang/attribute)
    concepts.csv                   concept, lang, name, family (the names a search or a query may use)
    signatures.csv                 attribute, class, signature (what each class looks like)
    world_spec.json                the resolved spec the world was built from

And, written the way a user's data looks, so that the default run reads them through the same
doors as a user's folder (no stage reads the world-only files above):
    search/<concept>/<rank>.jpg    the search-engine stand-in: for every concept with an English
                                   name, the images `search(concept)` returns, in search order
                                   (file names 0001.jpg, ... sort in rank order), bytes unchanged;
                                   read by acquisition source `folder`
    search/labels.csv              file (relative to search/), caption, gender, race, age: the true
                                   labels of every search image, in FairFace's classes (an animal
                                   figure's gender is empty); read by label source `csv`
    heldout_captions.csv           file (relative to the world), caption, concept: the held-out,
                                   evidence-bearing, English concept captions (one per image), a
                                   caption set (type captions, layout csv) for quality's retrieval
    reference.csv                  file (relative to the world), concept, gender, race, age: every
                                   train-split corpus image of a concept (every language) with its
                                   labels (an animal's gender empty), in corpus order; a
                                   labelled-folder dataset (BendVLM's labelled reference images)
    train_captions.csv             file, caption, concept, gender, race, age: the world's captions that
                                   name a gender (`gendered_captions`): each English train-split
                                   concept image's caption with its own gender word ("portrait of a
                                   female doctor"), then the concept-free group captions that name a
                                   gender; a caption set (type captions, layout csv) for SANER
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vlmbias import VlmbiasError
from vlmbias.audit.queries import caption_key
from vlmbias.io import run_cli, temp_dir_beside
from vlmbias.world.render import SCENES, keyed_rng, make_decoy, make_glyphs, render_person, save_jpeg, signatures_table
from vlmbias.world.spec import (
    ATTRIBUTES,
    CLASSES,
    DEFAULT_GROUP_NAMES,
    FILLER_NAMES,
    GENDER_NOUN,
    RACE_ADJ,
    as_names,
    class_distribution,
    resolve_spec,
)

log = logging.getLogger(__name__)

CORPUS_COLUMNS = ["image_id", "path", "caption", "lang", "concept", "evidence", "split", "gender", "race", "age",
                  "names", "scene", "decoy", "figure"]
BIAS_COLUMNS = ["concept", "lang", "attribute", "class", "planted"]

# ------------------------------------------------------------------------------------------- sampling

def _quota_counts(dist: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Counts summing to n that match `dist` (largest remainder; ties broken at random, so equal
    remainders do not always favour the first classes)."""
    exact = np.array([float(p) * n for p in dist.values()])
    counts = np.floor(exact + 1e-9).astype(int)
    order = np.lexsort((rng.random(len(exact)), -(exact - counts)))
    counts[order[: n - counts.sum()]] += 1
    return counts


def _table_counts(rows: dict, cols: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """A rows x cols count table for independent attributes whose row sums and column sums are both the
    exact quotas (controlled rounding), so neither marginal drifts from the plan by rounding cells."""
    r, c = _quota_counts(rows, n, rng), _quota_counts(cols, n, rng)
    expected = np.outer(r, c) / max(n, 1)
    table = np.floor(expected + 1e-9).astype(int)
    frac = expected - table
    need_r, need_c = r - table.sum(1), c - table.sum(0)
    # cells with the largest fractional part first (random among ties), while both margins need one
    order = np.lexsort((rng.random(frac.size), -frac.ravel()))
    for rounds in range(2):  # second round: any cell, in case the greedy pass got stuck
        for k in order:
            i, j = divmod(int(k), table.shape[1])
            if need_r[i] > 0 and need_c[j] > 0 and (rounds or frac[i, j] > 1e-9):
                table[i, j] += 1
                need_r[i] -= 1
                need_c[j] -= 1
    assert not need_r.any() and not need_c.any()
    return table


def _spread(dist: dict, n: int, rng: np.random.Generator) -> list:
    """Exactly n labels matching `dist`, in a low-discrepancy order: every contiguous run holds the
    classes in about their proportions, so cutting the sequence into groups balances each group."""
    keys = []
    for c, k in zip(dist, _quota_counts(dist, n, rng)):
        off = rng.random()
        keys += [((j + off) / k, rng.random(), c) for j in range(k)]
    keys.sort(key=lambda t: t[:2])
    return [c for _, _, c in keys]


def _people(dists: dict[str, dict], n: int, rng: np.random.Generator, cells: dict | None = None,
            cell_attrs: tuple = ("gender", "race"), **spread: dict) -> list[dict]:
    """n people whose gender x race cells match the product of the marginals exactly (or the given
    cell distribution), with age and every extra label (evidence, lang) spread evenly within cells.
    Why joint, not per-attribute quotas: a model can fit whatever gender x race (x evidence) cell
    happens to be over-filled by chance in a concept's few images, and top-k retrieval then
    amplifies that accident into a 'bias' the table never planted."""
    if cells is None:
        cells = {(g, r): dists["gender"][g] * dists["race"][r] for g in CLASSES["gender"] for r in CLASSES["race"]}
        counts = _table_counts(dists["gender"], dists["race"], n, rng).ravel()
    else:
        counts = _quota_counts(cells, n, rng)
    order = rng.permutation(len(cells))  # cells in random order, each one contiguous
    keys = list(cells)
    members = [keys[i] for i in order for _ in range(counts[i])]
    extra = {"age": dists["age"], **spread}
    seqs = {k: _spread(d, n, rng) for k, d in extra.items()}
    people = [{**dict(zip(cell_attrs, key)), **{k: seqs[k][i] for k in seqs}} for i, key in enumerate(members)]
    return [people[i] for i in rng.permutation(n)]


# ------------------------------------------------------------------------------------------- corpus

def _scene_dist(spec: dict, concept: str | None) -> dict[str, float]:
    """A concept's scenes: its preferred one with scene_affinity, the others share the rest."""
    if concept is None:
        return {sc: 1 / len(SCENES) for sc in SCENES}
    pref = spec["scene_resolved"][concept]
    aff = float(spec["scene_affinity"])
    return {sc: aff if sc == pref else (1 - aff) / (len(SCENES) - 1) for sc in SCENES}


def _decoy_dist(spec: dict) -> dict[bool, float]:
    return {True: float(spec["decoy_rate"]), False: 1 - float(spec["decoy_rate"])}


def _concept_rows(spec: dict) -> list[dict]:
    rows = []
    seed = int(spec["seed"])
    for concept, c in spec["concepts"].items():
        for lang, names in c["names"].items():
            n_total = int((c.get("images") or {}).get(lang, spec["images_per_concept"]))
            n_held = int(round(spec["heldout_fraction"] * n_total))
            planted = spec["planted_resolved"][f"{concept}|{lang}"]
            figure = c.get("figure", "person")
            for split, n in (("train", n_total - n_held), ("heldout", n_held)):
                rng = keyed_rng(seed, "concept", concept, lang, split)
                # quotas per split, so the heldout split carries the planted skew too; evidence is
                # spread within each cell, so the evidence-free images carry it as well
                rate = float(spec["evidence_rate"])
                people = _people(planted, n, rng, evidence={True: rate, False: 1 - rate},
                                 scene=_scene_dist(spec, concept), decoy=_decoy_dist(spec))
                templates = spec["templates"][lang]
                for p in people:
                    name = as_names(names)[rng.integers(len(as_names(names)))]
                    caption = templates[rng.integers(len(templates))].format(name)
                    rows.append({"caption": caption, "lang": lang, "concept": concept,
                                 "evidence": bool(p["evidence"]), "split": split,
                                 **{a: p[a] for a in ATTRIBUTES}, "scene": p["scene"], "decoy": bool(p["decoy"]),
                                 "figure": figure})
                    if figure != "person":  # no gender signature is drawn
                        rows[-1]["gender"] = None
    return rows


def _group_rows(spec: dict) -> list[dict]:
    """Captions that name a group: they teach the model which signature a group word means."""
    seed = int(spec["seed"])
    base = spec["base_resolved"]
    mix = {k: float(v) for k, v in spec["group_mix"].items() if float(v) > 0}
    total = sum(mix.values())
    langs = spec["group_languages"]
    rows = []
    if not mix or not langs or spec["group_images"] <= 0:
        return rows
    counts = {k: int(round(spec["group_images"] * v / total)) for k, v in mix.items()}
    for kind, n_kind in counts.items():
        for split, n in (("train", n_kind - int(round(spec["heldout_fraction"] * n_kind))),
                         ("heldout", int(round(spec["heldout_fraction"] * n_kind)))):
            rng = keyed_rng(seed, "group", kind, split)
            # the named attribute(s) are balanced over their classes, whatever the base says
            named = ["gender", "race"] if kind == "gender_race" else [kind]
            dists = {a: class_distribution(a, "uniform", "") if a in named else base[a] for a in ATTRIBUTES}
            people = _people(dists, n, rng, lang={lang: 1 / len(langs) for lang in langs},
                             scene=_scene_dist(spec, None), decoy=_decoy_dist(spec))
            for p in people:
                lang, g, r, a = p["lang"], p["gender"], p["race"], p["age"]
                if kind == "gender_race":
                    adj, noun = RACE_ADJ[lang][r], GENDER_NOUN[lang][g]
                    name = f"{'an' if adj[0] in 'AEIOU' else 'a'} {adj} {noun}" if lang == "en" else adj + noun
                    named = f"gender={g};race={r}"
                else:
                    cls = {"gender": g, "race": r, "age": a}[kind]
                    options = DEFAULT_GROUP_NAMES[kind][cls][lang]
                    name = options[rng.integers(len(options))]
                    named = f"{kind}={cls}"
                templates = spec["templates"][lang]
                caption = templates[rng.integers(len(templates))].format(name)
                rows.append({"caption": caption, "lang": lang, "concept": None, "evidence": False,
                             "split": split, "gender": g, "race": r, "age": a, "names": named,
                             "scene": p["scene"], "decoy": bool(p["decoy"]), "figure": "person"})
    return rows


def _filler_rows(spec: dict, rows: list[dict]) -> list[dict]:
    """Images with uninformative captions ("a photo of someone") whose demographics bring the corpus back to the
    base distribution.

    Why: a contrastive model learns roughly the pointwise mutual information log P(x|caption)/P(x),
    so a concept is measured against the corpus' *overall* demographics, not against the base. If the
    planted skews leave the corpus 57% Male, a 50/50 control comes out female-leaning. With the
    corpus balanced, the known answer is simply planted-vs-base. Balanced per split, per
    gender x race x scene cell and per age class: scenes are shared by several concepts, so a control
    would otherwise inherit the skew of its scene-mates. Tried and dropped: balancing only the
    evidence-free images (controls then lean away from what the evidence images over-represent: an
    image with another concept's glyph still competes for a query), and balancing each language on
    its own (twice the filler, no measurable gain)."""
    base = spec["base_resolved"]
    langs = [lang for lang in spec["group_languages"] if any(r["lang"] == lang for r in rows)]
    gr = {(g, r): base["gender"][g] * base["race"][r] for g in CLASSES["gender"] for r in CLASSES["race"]}
    grs = {(g, r, sc): p / len(SCENES) for (g, r), p in gr.items() for sc in SCENES}
    out = []

    def top_up(part: list[dict], shares: dict, attrs: tuple, key: str, with_age: bool, **spread) -> list[dict]:
        """Filler for `part`: the fewest images that make every cell (and age class) its base share."""
        n = len(part)
        have = Counter(tuple(r[a] for a in attrs) for r in part)
        ages = Counter(r["age"] for r in part)
        # smallest total T with share * T >= count for every cell (and age class)
        total = max([have[c] / p for c, p in shares.items() if p > 0]
                    + ([ages[a] / p for a, p in base["age"].items() if p > 0] if with_age else [0]))
        f = int(np.ceil(total - n - 1e-9)) if n else 0
        if f <= 0:
            return []

        def deficit(sh: dict, got: Counter) -> dict:
            d = {k: max(0.0, p * (n + f) - got[k]) for k, p in sh.items()}
            return {k: v / sum(d.values()) for k, v in d.items()}

        rng = keyed_rng(int(spec["seed"]), "filler", key)
        people = _people({"age": deficit(base["age"], ages) if with_age else base["age"]}, f, rng,
                         cells=deficit(shares, have), cell_attrs=attrs, decoy=_decoy_dist(spec), **spread)
        filled = []
        for p in people:
            lang = p.pop("lang")
            names = FILLER_NAMES.get(lang, FILLER_NAMES["en"])
            templates = spec["templates"][lang]
            caption = templates[rng.integers(len(templates))].format(names[rng.integers(len(names))])
            filled.append({"caption": caption, "lang": lang, "concept": None,
                           "evidence": False, **p, "decoy": bool(p["decoy"]), "figure": "person"})
        return filled

    for split in ("train", "heldout"):
        # people only: an animal figure has a hue but no gender and is no one's demographics
        part = [r for r in rows if r["split"] == split and r.get("figure", "person") == "person"]
        added = top_up(part, grs, ("gender", "race", "scene"), split, True,
                       lang={lang: 1 / len(langs) for lang in langs or ["en"]})
        out += [{**r, "split": split} for r in added]
    return out


def bias_table(spec: dict) -> pd.DataFrame:
    rows = []
    for key, planted in spec["planted_resolved"].items():
        concept, lang = key.split("|")
        person = spec["concepts"][concept].get("figure", "person") == "person"
        for attr in ATTRIBUTES if person else [a for a in ATTRIBUTES if a != "gender"]:
            for cls in CLASSES[attr]:
                rows.append({"concept": concept, "lang": lang, "attribute": attr, "class": cls,
                             "planted": round(planted[attr][cls], 6)})
    return pd.DataFrame(rows, columns=BIAS_COLUMNS)


def concepts_table(spec: dict) -> pd.DataFrame:
    rows = [{"concept": concept, "lang": lang, "name": name, "family": c.get("family", "")}
            for concept, c in spec["concepts"].items() for lang, names in c["names"].items() for name in as_names(names)]
    return pd.DataFrame(rows, columns=["concept", "lang", "name", "family"])


def _test_rows(spec: dict) -> pd.DataFrame:
    """Balanced test split: equal counts per gender x race cell, ages spread evenly within each cell."""
    rng = keyed_rng(int(spec["seed"]), "test")
    per_cell = int(spec["test_per_cell"])
    rows = []
    for g in CLASSES["gender"]:
        for r in CLASSES["race"]:
            ages = _spread(spec["base_resolved"]["age"], per_cell, rng)
            scenes = _spread(_scene_dist(spec, None), per_cell, rng)
            decoys = _spread(_decoy_dist(spec), per_cell, rng)
            for i in range(per_cell):
                # service_test: FairFace's flag for its balanced service-test subset; here half of each cell
                rows.append({"age": ages[i], "gender": g, "race": r, "service_test": i < per_cell // 2,
                             "scene": scenes[i], "decoy": bool(decoys[i])})
    df = pd.DataFrame(rows).iloc[rng.permutation(len(rows))].reset_index(drop=True)
    df.insert(0, "file", [f"val/{i + 1}.jpg" for i in range(len(df))])
    return df


# ------------------------------------------------------------------------------------------- public API

def generate_world(spec: dict, out_dir: str | os.PathLike) -> None:
    """Write a complete world to out_dir (built in a temporary sibling, then renamed into place)."""
    spec = resolve_spec(spec)
    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    try:
        _write_world(spec, tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_world(spec: dict, root: Path) -> None:
    seed, size = int(spec["seed"]), int(spec["image_size"])
    glyphs = make_glyphs(list(spec["concepts"]), seed)
    rows = _concept_rows(spec) + _group_rows(spec)
    if spec["balance_marginals"]:
        rows += _filler_rows(spec, rows)
    corpus = pd.DataFrame(rows)
    # one global shuffle so ids carry no information about concept or split
    corpus = corpus.iloc[keyed_rng(seed, "corpus-order").permutation(len(corpus))].reset_index(drop=True)
    corpus["names"] = corpus["names"] if "names" in corpus else None
    corpus["image_id"] = [f"c{i:06d}" for i in range(len(corpus))]
    corpus["path"] = [f"corpus/{i:06d}.jpg" for i in range(len(corpus))]
    (root / "corpus").mkdir()
    for row in tqdm(corpus.itertuples(), total=len(corpus), desc="render corpus", unit="img", mininterval=2):
        rng = keyed_rng(seed, "img", row.image_id)
        glyph = glyphs[row.concept] if row.evidence else None
        decoy = make_decoy(glyphs, rng) if row.decoy else None
        save_jpeg(render_person(size, row.gender, row.race, row.age, row.scene, glyph, decoy, spec["noise"],
                                spec["clutter"], rng, figure=row.figure),
                  root / row.path)
    corpus = corpus[CORPUS_COLUMNS]
    corpus.to_parquet(root / "corpus.parquet", index=False)
    corpus.to_csv(root / "corpus.csv", index=False)

    test = _test_rows(spec)
    (root / "fairface" / "val").mkdir(parents=True)
    for row in tqdm(test.itertuples(), total=len(test), desc="render test", unit="img", mininterval=2):
        rng = keyed_rng(seed, "test-img", row.file)
        decoy = make_decoy(glyphs, rng) if row.decoy else None
        save_jpeg(render_person(size, row.gender, row.race, row.age, row.scene, None, decoy, spec["noise"],
                           spec["clutter"], rng),
                   root / "fairface" / row.file)
    test[["file", "scene", "decoy"]].to_csv(root / "test_details.csv", index=False)
    test[["file", "age", "gender", "race", "service_test"]].to_csv(root / "fairface" / "fairface_label_val.csv",
                                                                   index=False)
    bias_table(spec).to_csv(root / "bias_table.csv", index=False)
    concepts_table(spec).to_csv(root / "concepts.csv", index=False)
    signatures_table().to_csv(root / "signatures.csv", index=False)
    _write_search_folders(spec, root, corpus)
    _write_heldout_captions(corpus, root)
    _write_reference(corpus, root)
    _write_train_captions(corpus, concepts_table(spec), root)
    (root / "world_spec.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                                          encoding="utf-8")
    log.info("world: %d corpus images (%d train), %d test images, %d concept/lang pairs", len(corpus),
             int((corpus["split"] == "train").sum()), len(test), len(spec["planted_resolved"]))


def _write_search_folders(spec: dict, root: Path, corpus: pd.DataFrame) -> None:
    """The search stand-in as a folder per concept + a CSV of true labels (see the module doc).
    corpus: the corpus table with paths relative to root."""
    names = _read_names(root)
    labels = []
    for concept, c in spec["concepts"].items():
        if "en" not in c["names"]:  # a concept key is searched in English; nothing to write without a name
            continue
        if "/" in concept or concept.startswith("."):
            raise VlmbiasError(f"world: concept {concept!r} cannot name a search folder")
        hits = _search_in(names, corpus, concept, limit=10 ** 9, seed=int(spec["seed"]))
        (root / "search" / concept).mkdir(parents=True)
        for row in hits.itertuples(index=False):
            rel = f"{concept}/{row.rank:04d}.jpg"
            _link_or_copy(root / row.path, root / "search" / rel)  # same bytes: same content hash on acquisition
            labels.append({"file": rel, "caption": row.caption, "gender": "" if pd.isna(row.gender) else row.gender, "race": row.race,
                           "age": row.age})
    pd.DataFrame(labels, columns=["file", "caption", "gender", "race", "age"]).to_csv(
        root / "search" / "labels.csv", index=False)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # a hard link: no second copy of the bytes
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def _write_heldout_captions(corpus: pd.DataFrame, root: Path) -> None:
    held = corpus[(corpus["split"] == "heldout") & corpus["evidence"].astype(bool) & corpus["concept"].notna()
                  & (corpus["lang"] == "en")]
    held.rename(columns={"path": "file"})[["file", "caption", "concept"]].to_csv(root / "heldout_captions.csv",
                                                                                 index=False)


def _write_reference(corpus: pd.DataFrame, root: Path) -> None:
    """reference.csv: the train split's concept images with their labels, in corpus order (a labelled-folder
    dataset). The concept-free group and filler images are not reference images."""
    train = corpus[(corpus["split"] == "train") & corpus["concept"].notna()].rename(columns={"path": "file"})
    train[["file", "concept", *ATTRIBUTES]].to_csv(root / "reference.csv", index=False)


def gendered_captions(corpus: pd.DataFrame, names: pd.DataFrame, words: dict | None = None) -> pd.DataFrame:
    """The world's captions that name a gender (corpus columns, train split, English), for every concept.

    A concept caption never names a gender ("portrait of a doctor"); like COCO's "a man cooking" of a
    picture of a man, each English train-split concept image gets its caption with its own gender word
    ("portrait of a female doctor"), in corpus order; then the concept-free group captions that already
    name a gender ("a male person"), in corpus order. names: concepts.csv."""
    from vlmbias.mitigate.saner import neutralize

    words = words or {"Male": "male", "Female": "female"}
    train = corpus[(corpus["split"] == "train") & (corpus["lang"] == "en")]
    en = names[names["lang"] == "en"].set_index("concept")["name"].to_dict()
    rows = []
    for r in train[train["concept"].notna()].itertuples():
        word, name = words.get(r.gender), en.get(r.concept)
        if word is None or not name or name not in r.caption:
            continue
        rows.append({**r._asdict(), "caption": r.caption.replace(name, f"a {word} {r.concept}", 1)})
    groups = train[train["concept"].isna()]
    out = pd.concat([pd.DataFrame(rows, columns=["Index", *corpus.columns]),
                     groups[groups["caption"].map(lambda c: neutralize(c) is not None)]], ignore_index=True)
    return out.drop(columns=["Index"], errors="ignore")


def _write_train_captions(corpus: pd.DataFrame, names: pd.DataFrame, root: Path) -> None:
    """train_captions.csv: `gendered_captions` as a caption set (type captions, layout csv)."""
    rows = gendered_captions(corpus, names).rename(columns={"path": "file"})
    rows[["file", "caption", "concept", *ATTRIBUTES]].to_csv(root / "train_captions.csv", index=False)


def load_bias_table(world_dir: str | os.PathLike) -> pd.DataFrame:
    path = Path(world_dir) / "bias_table.csv"
    if not path.is_file():
        raise VlmbiasError(f"no bias table at {path}; is {world_dir} a generated world?")
    return pd.read_csv(path, dtype={"concept": str, "lang": str, "attribute": str, "class": str},
                       keep_default_na=False)


def load_corpus(world_dir: str | os.PathLike) -> pd.DataFrame:
    """The corpus with absolute image paths."""
    world_dir = Path(world_dir).resolve()
    path = world_dir / "corpus.parquet"
    if not path.is_file():
        raise VlmbiasError(f"no corpus at {path}; is {world_dir} a generated world?")
    df = pd.read_parquet(path)
    df["path"] = [str(world_dir / p) for p in df["path"]]
    return df


def search(world_dir: str | os.PathLike, keyword: str, limit: int, seed: int = 0,
           lang: str | None = None) -> pd.DataFrame:
    """Search-engine stand-in: corpus images of the concept the keyword names, in any language.

    The keyword may be a concept key ("doctor") or any of its names in any language ("a doctor",
    "医生"); articles are ignored. Results come from the language(s) whose name matched (a concept
    key matches English), as a web search in that language would, unless `lang` is given. The
    order is a seeded random permutation of all matching images, so any prefix keeps the corpus'
    skew in expectation. Returns the corpus columns (absolute `path`) plus a 1-based `rank`.
    """
    return _search_in(_read_names(world_dir), load_corpus(world_dir), keyword, limit, seed, lang)


def _read_names(world_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(Path(world_dir) / "concepts.csv", dtype=str, keep_default_na=False)


def _search_in(names: pd.DataFrame, corpus: pd.DataFrame, keyword: str, limit: int, seed: int = 0,
               lang: str | None = None) -> pd.DataFrame:
    key = caption_key(keyword)
    hits = names[names["name"].map(caption_key) == key][["concept", "lang"]]
    by_key = names[(names["concept"].map(caption_key) == key) & (names["lang"] == "en")][["concept", "lang"]]
    hits = pd.concat([hits, by_key]).drop_duplicates()
    if lang is not None:
        hits = names[names["concept"].isin(hits["concept"]) & (names["lang"] == lang)][["concept", "lang"]]
        hits = hits.drop_duplicates()
    if hits.empty:
        known = sorted(set(names["name"]))
        raise VlmbiasError(f"search: no concept matches {keyword!r}" + (f" in language {lang!r}" if lang else "")
                           + f"; known names: {known[:20]}{' ...' if len(known) > 20 else ''}")
    pairs = set(map(tuple, hits.to_numpy()))
    match = corpus[(corpus["concept"].astype(str) + "|" + corpus["lang"].astype(str)).isin({f"{c}|{l}" for c, l in pairs})]
    order = keyed_rng(seed, "search", key, lang or "").permutation(len(match))
    out = match.iloc[order[: max(0, int(limit))]].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def _load_spec_file(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise VlmbiasError(f"{path}: expected a mapping")
    return data.get("world", data)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vlmbias.world.generate", description="Generate the calibration world.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a world directory")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec-json", help="the `world` config block as JSON")
    src.add_argument("--spec", help="a YAML file holding a `world:` block (or the block itself)")
    g.add_argument("--out", required=True)
    s = sub.add_parser("search", help="print search-engine stand-in results")
    s.add_argument("--world", required=True)
    s.add_argument("keyword")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.cmd == "generate":
        if a.spec_json:
            from vlmbias.io import parse_json_arg
            spec = parse_json_arg(a.spec_json, "--spec-json")
        else:
            spec = _load_spec_file(a.spec)
        generate_world(spec, a.out)
    else:
        print(search(a.world, a.keyword, a.limit, a.seed).to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
