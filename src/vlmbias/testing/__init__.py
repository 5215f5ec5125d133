"""Small offline stand-ins built here, for tests and benchmarks: folders of generated images in each
dataset's published layout, tiny random-weight models for both encoder backends (as local folders,
as open_clip pretrained tags, or in the Hugging Face hub cache), stand-in DeepFace weights
(`vlmbias.testing.deepface`), a local image search engine (`vlmbias.testing.search`) and the whole
set `config/thesis.yaml` needs (`vlmbias.testing.thesis`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vlmbias.audit.data import FAIRFACE_CLASSES


def make_fairface_folder(root: str | Path, per_cell: int = 2, size: int = 32, seed: int = 0, split: str = "val") -> Path:
    """FairFace layout (<split>/<n>.jpg + fairface_label_<split>.csv), balanced over gender x race.

    Each image is a flat colour keyed to its race plus a gender-keyed bar and noise, so a model
    can tell groups apart; labels are exact by construction.
    """
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for g_i, gender in enumerate(FAIRFACE_CLASSES["gender"]):
        for r_i, race in enumerate(FAIRFACE_CLASSES["race"]):
            for _ in range(per_cell):
                n += 1
                img = np.full((size, size, 3), 30 * r_i + 20, np.uint8)
                img[:, : size // 4 * (1 + g_i)] = 200
                img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"{n}.jpg", quality=95)
                age = FAIRFACE_CLASSES["age"][int(rng.integers(0, 9))]
                rows.append({"file": f"{split}/{n}.jpg", "age": age, "gender": gender, "race": race,
                             "service_test": str(bool(n % 2))})
    pd.DataFrame(rows).to_csv(root / f"fairface_label_{split}.csv", index=False)
    return root


# COCO-like captions: SANER needs some that name a gender (and some that do not)
COCO_STANDIN_CAPTIONS = ["A man riding a bike down the street.", "A woman holding an umbrella in the rain.",
                         "A boy throwing a frisbee in a park.", "A girl sitting at a table with a cake.",
                         "A plate of food on a wooden table.", "A bus parked beside a building."]


def make_coco_captions_folder(root: str | Path, n: int = 4, size: int = 32) -> Path:
    """COCO captions layout (`val2017/<id>.jpg` + `annotations/captions_val2017.json`), two captions an
    image, drawn in turn from COCO_STANDIN_CAPTIONS."""
    root = Path(root)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(1, n + 1):
        name = f"{i:012d}.jpg"
        Image.fromarray(np.full((size, size, 3), 40 * i % 256, np.uint8)).save(root / "val2017" / name)
        images.append({"id": i, "file_name": name})
        annotations += [{"image_id": i, "id": 2 * i + j, "caption": COCO_STANDIN_CAPTIONS[(2 * i + j) % len(COCO_STANDIN_CAPTIONS)]}
                        for j in (0, 1)]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def make_thesis_data(workdir: str | Path) -> None:
    """Offline stand-ins for the data `config/thesis.yaml` reads, at its relative paths under workdir:
    FairFace (val and train splits) and COCO captions."""
    workdir = Path(workdir)
    for split in ("val", "train"):
        make_fairface_folder(workdir / "data" / "fairface-img-margin025-trainval", per_cell=1, split=split)
    make_coco_captions_folder(workdir / "data" / "coco")


def make_tiny_hf_clip(out_dir: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A random-weight transformers CLIPModel small enough for unit tests, with a byte-level tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from vlmbias.world.tokenizer import write_tokenizer_files

    out = Path(out_dir)
    write_tokenizer_files(out, merges=[])  # CLIP's byte-level alphabet, no merges: any script encodes
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def make_lora_adapter(base: str | Path, folder: str | Path, targets=("q_proj", "v_proj"), seed: int = 1,
                      **config) -> Path:
    """A peft LoRA adapter (r 4, alpha 8) on `targets` of the hf CLIPModel folder `base`, with random, non-zero B
    (a fresh adapter's B is zero and would merge to nothing), saved in `folder`. `config`: more LoraConfig keys."""
    import torch
    from peft import LoraConfig, get_peft_model

    from vlmbias.encoders.models import load_clip_weights

    torch.manual_seed(seed)
    model = get_peft_model(load_clip_weights(str(base), torch.float32, native=False),
                           LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(folder))
    return Path(folder)


def make_hf_hub_cache(hf_home: str | Path, repo_id: str, seed: int = 0) -> Path:
    """A tiny random-weight CLIP (make_tiny_hf_clip) in the Hugging Face hub cache under `hf_home`, as
    if `repo_id` had been downloaded: with HF_HOME=hf_home and HF_HUB_OFFLINE=1, loading `repo_id`
    finds it. Returns the snapshot folder."""
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    snapshot = make_tiny_hf_clip(repo / "snapshots" / revision, seed=seed)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def tiny_open_clip_config(path: str | Path, name: str = "vlmbias-tiny-vit") -> Path:
    """A JSON open_clip architecture (registered by the `config` key of a model spec)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    target = path if path.suffix == ".json" else path / f"{name}.json"
    target.write_text(json.dumps(cfg))
    return target


def make_tiny_open_clip_tags(folder: str | Path, tags: dict[str, list[str]]) -> dict:
    """Tiny open_clip architectures with random-weight checkpoints registered as pretrained tags:
    `tags` = {architecture: [tag, ...]}; each architecture's JSON config goes to folder/configs/
    (widths differ per architecture), each tag's weights (seeded by its position) to
    folder/<arch>.<tag>.safetensors. Returns the model entry keys {"config": folder, "tags": {...}}."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    configs = folder / "configs"
    out = {}
    seed = 0
    for i, (arch, arch_tags) in enumerate(tags.items()):
        cfg = tiny_open_clip_config(configs / f"{arch}.json")
        spec = json.loads(cfg.read_text())
        spec["vision_cfg"]["width"] = spec["text_cfg"]["width"] = 32 + 16 * i
        cfg.write_text(json.dumps(spec))
        open_clip.add_model_config(cfg)
        for tag in arch_tags:
            torch.manual_seed(seed)
            seed += 1
            model = open_clip.create_model(arch, pretrained=None)
            path = folder / f"{arch}.{tag}.safetensors"
            save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
            out[f"{arch}:{tag}"] = str(path)
    return {"config": str(configs), "tags": out}


def cut_default_run(config: dict) -> dict:
    """The default config's cuts for the end-to-end test (tests/test_workflow.py) and
    `benchmarks/e2e.py --test-cuts`: fewer acquired images, the trained mitigations cut to 3 steps
    (the world, the audit and the training-free methods run as shipped). Changes config in place."""
    mit = config["mitigation"]
    mit["acquire"]["limit"] = 40
    mit["label"]["balanced"]["allow_missing"] = True
    mit["finetune"].update(max_steps=3)
    for spec in mit["methods"].values():
        if spec["kind"] in ("saner", "prompt-array"):
            spec["max_steps"] = 3
    return config


def _face(path: Path, colour: int, size: int = 32, rng=None) -> None:
    img = np.full((size, size, 3), colour, np.uint8)
    if rng is not None:
        img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95)


# UTKFace's own malformed names: a field missing (no race) and a stray extension
UTKFACE_BAD_NAMES = ["39_1_20170116174525125.jpg.chip.jpg", "61_3_20170109150557335.jpg.chip.jpg",
                     "1_0_9_20161219140623097.jpg.chip.jpg"]


def make_utkface_folder(root: str | Path, seed: int = 0) -> Path:
    """UTKFace layout (`UTKFace/<age>_<gender>_<race>_<date>.jpg.chip.jpg`): every gender x race
    once at ages 1, 25 and 75, plus the malformed names of UTKFACE_BAD_NAMES (a missing field; a
    race code outside 0..4)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = 0
    for age in (1, 25, 75):
        for g in range(2):
            for r in range(5):
                n += 1
                _face(root / f"{age}_{g}_{r}_2017011617452{n:04d}.jpg.chip.jpg", 40 * r + 10 * g, rng=rng)
    for name in UTKFACE_BAD_NAMES:
        _face(root / name, 128, rng=rng)
    return root


CELEBA_STANDIN_ATTRIBUTES = ["5_o_Clock_Shadow", "Eyeglasses", "Male", "Young"]


def make_celeba_folder(root: str | Path, n: int = 12, seed: int = 0) -> Path:
    """CelebA layout: `img_align_celeba/<6 digits>.jpg`, `list_attr_celeba.txt` (count line,
    attribute-name line, then +1/-1 per attribute, padded with double spaces as released) and
    `list_eval_partition.txt` (0/1/2). Images alternate Male/Female; partitions cycle 0, 1, 2; the
    last image is missing from the partition file."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    lines = [str(n), " ".join(CELEBA_STANDIN_ATTRIBUTES)]
    for i, name in enumerate(names):
        _face(root / "img_align_celeba" / name, 20 * (i % 10), rng=rng)
        vals = ["-1", "1" if i % 3 == 0 else "-1", "1" if i % 2 == 0 else "-1", "1" if i < n // 2 else "-1"]
        lines.append(name + "".join(f" {v:>2}" for v in vals))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    parts = [f"{name} {i % 3}" for i, name in enumerate(names[:-1])]
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return root


def make_facet_folder(root: str | Path, seed: int = 0) -> Path:
    """FACET layout: `annotations/annotations.csv` (one row per person: person_id, filename, class1,
    one-hot gender_presentation_*, age_presentation_*, skin_tone_1..10 votes, visible_* flags,
    `bounding_box` as JSON) and images under `imgs_1/`. sa_1.jpg holds two persons (left half a
    dark masc person, right half a light fem person); sa_2.jpg one person whose face is not visible
    (flagged `visible_minimal`) and whose skin-tone votes tie; sa_3.jpg one person with gender `na`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = 30
    img[:, 40:] = 220
    (root / "imgs_1").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / "imgs_1" / "sa_1.jpg", quality=95)
    _face(root / "imgs_1" / "sa_2.jpg", 100, size=48, rng=rng)
    _face(root / "imgs_1" / "sa_3.jpg", 160, size=48, rng=rng)

    def person(pid, fname, cls, gender, age, votes, face, box):
        row = {"person_id": pid, "filename": fname, "class1": cls, "class2": ""}
        row.update({f"gender_presentation_{c}": int(c == gender) for c in ("masc", "fem", "non_binary", "na")})
        row.update({f"age_presentation_{c}": int(c == age) for c in ("young", "middle", "older", "na")})
        row.update({f"skin_tone_{i}": votes.get(i, 0) for i in range(1, 11)})
        row.update({"skin_tone_na": 0, "visible_torso": 1, "visible_face": face, "visible_minimal": int(not face),
                    "lighting_well_lit": 1,
                    "bounding_box": json.dumps({"x": box[0], "y": box[1], "width": box[2], "height": box[3],
                                                "dont_care": False})})
        return row

    rows = [person(1, "sa_1.jpg", "doctor", "masc", "middle", {9: 2, 8: 1}, 1, (0, 0, 40, 40)),
            person(2, "sa_1.jpg", "nurse", "fem", "young", {2: 3}, 1, (40, 0, 40, 40)),
            person(3, "sa_2.jpg", "guitarist", "fem", "older", {4: 1, 5: 1}, 0, (4, 4, 30, 40)),
            person(4, "sa_3.jpg", "doctor", "na", "na", {6: 2}, 1, (0, 0, 48, 48))]
    (root / "annotations").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "annotations" / "annotations.csv", index=False)
    return root


# SocialCounterfactuals stand-in: the attribute values of each set type, as in the released captions
_SOCIALCF_SETS = {
    ("race", "gender"): [(r, g) for r in ("White", "Black", "Indian", "Asian", "Middle Eastern", "Latino")
                         for g in ("male", "female")],
    ("physical", "gender"): [(p, g) for p in ("skinny", "obese") for g in ("male", "female")],
    ("physical", "race"): [(p, r) for p in ("young", "old") for r in ("White", "Black", "Asian")],
}


def make_socialcounterfactuals_folder(root: str | Path, occupations=("doctor", "nurse"), seed: int = 0) -> Path:
    """SocialCounterfactuals layout: hub parquet shards `data/train-0000i-of-00002.parquet` with columns
    `image` ({bytes, path}: PNG bytes), `counterfactual_set`, `a1_type`, `a1`, `a2_type`, `a2`, `a1a2`,
    `caption`. One set per (set type, occupation), shard 0 the race-gender sets, shard 1 the others;
    each image is a flat colour keyed to its a1 value with a bar keyed to its a2 value. Awkward row:
    the last image of the first race-gender set has no image bytes."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = [[], []]
    for (t1, t2), combos in _SOCIALCF_SETS.items():
        for occ in occupations:
            cf_set = f"a_photo_of_{t1}_{t2}_{occ}_{int(rng.integers(10**9))}"
            for i, (v1, v2) in enumerate(combos):
                img = np.full((32, 32, 3), 20 + 20 * (i // 2), np.uint8)
                img[:, : 8 * (1 + i % 2)] = 200
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                article = "an" if v1[0].lower() in "aeiou" else "a"
                data = buf.getvalue()
                if (t1, t2) == ("race", "gender") and occ == occupations[0] and i == len(combos) - 1:
                    data = None
                shards[0 if t1 == "race" else 1].append(
                    {"image": {"bytes": data, "path": None}, "counterfactual_set": cf_set, "a1_type": t1,
                     "a1": v1, "a2_type": t2, "a2": v2, "a1a2": f"{v1} {v2}",
                     "caption": f"A photo of {article} {v1} {v2} {occ}"})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), *((c, pa.string()) for c in
                        ("counterfactual_set", "a1_type", "a1", "a2_type", "a2", "a1a2", "caption"))])
    for i, rows in enumerate(shards):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "data" / f"train-{i:05d}-of-00002.parquet")
    return root


def make_wds_utkface_folder(root: str | Path, split: str = "test", seed: int = 0) -> Path:
    """The fairness webdataset layout of DataComp's UTKFace copy: `classnames.txt` (`<objective>:<class>`
    lines for race, gender, age and toxic) and `<split>/0.tar`, `<split>/1.tar` of `<key>.webp` +
    `<key>.npy` (class indices age, gender, race, race_binary). Every gender x race once per shard
    (age index = race index); awkward sample: the last key of shard 1 has an image but no .npy."""
    import io
    import tarfile

    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    races, genders = ["White", "Black", "Asian", "Indian", "Others"], ["Male", "Female"]
    ages = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]
    lines = ([f"race:{r}" for r in races] + [f"gender:{g}" for g in genders] + [f"age:{a}" for a in ages]
             + ["toxic:a doctor", "toxic:a thief"])
    (root / "classnames.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(seed)
    for s in range(2):
        with tarfile.open(root / split / f"{s}.tar", "w") as tar:
            def add(name, data):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            n = 0
            for g in range(2):
                for r in range(5):
                    key = f"s{s:04d}{n:04d}"
                    n += 1
                    buf = io.BytesIO()
                    img = np.clip(np.full((32, 32, 3), 40 * r + 10 * g) + rng.integers(-5, 5, (32, 32, 3)), 0, 255)
                    Image.fromarray(img.astype(np.uint8)).save(buf, format="WEBP")
                    add(f"{key}.webp", buf.getvalue())
                    if s == 1 and g == 1 and r == 4:
                        continue  # the awkward sample: no label vector
                    vec = io.BytesIO()
                    np.save(vec, np.array([r, g, r, int(r != 0)], dtype=np.int64))
                    add(f"{key}.npy", vec.getvalue())
    return root
