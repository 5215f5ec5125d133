import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vlmbias.encoders.clip_preprocess import ClipPreprocessor, ClipTokenizer, load_clip_preprocessor, load_clip_tokenizer
from vlmbias.encoders.models import LazyImageProcessor, load_hf_parts

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# the same images in many modes and shapes: smaller, equal and larger than the crops below, odd, both orientations
SIZES = [(32, 32), (31, 33), (33, 31), (7, 5), (5, 200), (200, 5), (64, 48), (48, 64), (1, 1), (1, 40), (99, 97),
         (224, 224), (300, 451)]


def _images():
    rng = np.random.default_rng(0)
    out = []
    for h, w in SIZES:
        a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        rgb = Image.fromarray(a[..., :3], "RGB")
        transparent = rgb.convert("P")
        transparent.info["transparency"] = 3
        out += [rgb, Image.fromarray(a[..., 0], "L"), Image.fromarray(a, "RGBA"), rgb.convert("P"), transparent,
                Image.fromarray(a, "RGBA").convert("CMYK"), Image.fromarray(a[..., :2], "LA")]
    return out


IMAGES = _images()


def _world_processor():
    from vlmbias.world.model import _image_processor
    return _image_processor(32, [0.4727, 0.4704, 0.4698], [0.2303, 0.2282, 0.2292])


def _saved(folder, **kwargs):
    from transformers import CLIPImageProcessor
    CLIPImageProcessor(**kwargs).save_pretrained(folder)
    return folder


def _written(folder, config: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


CONFIGS = {
    "tiny_hf": lambda f: _saved(f, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    "world": lambda f: (_world_processor().save_pretrained(f), f)[1],
    "openai": lambda f: _saved(f, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                               do_convert_rgb=True, image_mean=OPENAI_MEAN, image_std=OPENAI_STD),
    # the file on the hub for openai/clip-vit-base-patch32: sizes as ints, no rescale keys
    "openai_old_form": lambda f: _written(f, {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD,
        "resample": 3, "size": 224}),
    "bilinear_odd_crop": lambda f: _saved(f, size={"shortest_edge": 31}, crop_size={"height": 17, "width": 40},
                                          resample=2),
    "no_resize": lambda f: _saved(f, size={"shortest_edge": 20}, crop_size={"height": 25, "width": 25},
                                  do_resize=False),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def folder(request, tmp_path_factory):
    return CONFIGS[request.param](tmp_path_factory.mktemp(request.param))


def _reference(folder):
    from transformers import CLIPImageProcessor
    return CLIPImageProcessor.from_pretrained(str(folder))


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a, b)


def test_pixels_bitwise_equal_to_transformers(folder):
    ref, own = _reference(folder), load_clip_preprocessor(folder)
    assert isinstance(own, ClipPreprocessor)
    for image in IMAGES:
        want = ref(images=image, return_tensors="pt")["pixel_values"]
        got = own(images=image, return_tensors="pt")["pixel_values"]
        assert _bitwise_equal(got, want), (image.mode, image.size)
    batch = IMAGES[:20]
    assert _bitwise_equal(own(images=batch, return_tensors="pt")["pixel_values"],
                          ref(images=batch, return_tensors="pt")["pixel_values"])


def test_attributes_and_save_pretrained(folder, tmp_path):
    ref, own = _reference(folder), load_clip_preprocessor(folder)
    assert list(own.image_mean) == list(ref.image_mean) and list(own.image_std) == list(ref.image_std)
    assert own.crop_size == dict(ref.crop_size) and own.size["shortest_edge"] == ref.size.shortest_edge
    own.save_pretrained(tmp_path / "copy")
    again = load_clip_preprocessor(tmp_path / "copy")
    image = IMAGES[5]
    assert torch.equal(again(images=image, return_tensors="pt")["pixel_values"],
                       own(images=image, return_tensors="pt")["pixel_values"])


def test_other_calls_go_to_transformers(tmp_path):
    folder = CONFIGS["tiny_hf"](tmp_path / "m")
    own, ref = load_clip_preprocessor(folder), _reference(folder)
    array = np.asarray(IMAGES[0])  # not a PIL image: transformers' own handling
    assert torch.equal(own(images=array, return_tensors="pt")["pixel_values"],
                       ref(images=array, return_tensors="pt")["pixel_values"])
    assert isinstance(own(images=IMAGES[0], return_tensors="np")["pixel_values"], np.ndarray)
    assert own.model_input_names == ref.model_input_names  # an attribute only transformers' processor has


BASE = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "image_processor_type": "CLIPImageProcessor"}


@pytest.mark.parametrize("change", [
    {"do_pad": True},
    {"size": {"height": 32, "width": 32}},
    {"size": {"shortest_edge": 32, "longest_edge": 64}},
    {"crop_size": [32, 32]},
    {"resample": 0}, {"resample": 1}, {"resample": 4}, {"resample": 5}, {"resample": True},
    {"image_processor_type": "SiglipImageProcessor"},
    {"use_square_size": True},
    {"some_unknown_key": 1},
    {"do_convert_rgb": False}, {"do_rescale": False}, {"do_normalize": False},
    {"do_resize": "yes"},
    {"image_mean": 0.5}, {"image_std": [0.2, 0.0, 0.2]},
    {"disable_grouping": False},
])
def test_unsupported_configs_fall_back(tmp_path, change):
    assert load_clip_preprocessor(_written(tmp_path / "m", {**BASE, **change})) is None


def test_missing_or_overridden_config_falls_back(tmp_path):
    assert load_clip_preprocessor(tmp_path) is None
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    assert load_clip_preprocessor(tmp_path) is None
    folder = _written(tmp_path / "m", BASE)
    assert load_clip_preprocessor(folder) is not None
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": BASE}))
    assert load_clip_preprocessor(folder) is None


def test_lazy_processor_uses_own_preprocessing_where_it_can(tmp_path):
    from transformers import CLIPImageProcessor

    own = LazyImageProcessor(str(CONFIGS["tiny_hf"](tmp_path / "a")), "model")
    assert isinstance(own._get(), ClipPreprocessor)
    other = LazyImageProcessor(str(_written(tmp_path / "b", {**BASE, "do_pad": True})), "model")
    assert isinstance(other._get(), CLIPImageProcessor)


def _heavy_modules_imported_by(code: str) -> str:
    """The transformers and torchvision modules a fresh Python has imported after running `code`."""
    code += "import sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torchvision')))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_preprocessing_a_folder_never_imports_transformers(tmp_path):
    folder = CONFIGS["world"](tmp_path / "m")
    code = (
        "import sys\nfrom PIL import Image\nfrom vlmbias.encoders.models import LazyImageProcessor\n"
        f"p = LazyImageProcessor({str(folder)!r}, 'model')\n"
        "x = p(images=[Image.new('RGB', (40, 30)), Image.new('L', (9, 50))], return_tensors='pt')['pixel_values']\n"
        "assert x.shape == (2, 3, 32, 32), x.shape\n"
    )
    assert _heavy_modules_imported_by(code) == "[]"


# ---- tokenizer ----

def _texts():
    rnd = np.random.default_rng(0)
    alphabet = list("abc XYZ éñü日本語🙂\t\n  '’s're-!?.,0123<|>")
    fixed = ["", " ", "\n", "a photo of a doctor", "A  PHOTO   of\ta nurse!!", "héllo wörld ñ 日本語 🙂", "x" * 500,
             " ".join(["word"] * 100), "don't it's we're", "<|endoftext|> hi <|startoftext|>", "<|endoftext|>",
             "ﬁ ligature Ǆ", "İstanbul", "\u0301 combining e\u0301", "\x00 nul \x7f"]
    return fixed + ["".join(rnd.choice(alphabet, rnd.integers(0, 120))) for _ in range(150)]


TEXTS = _texts()
CALLS = [dict(truncation=False), dict(padding=True, truncation=True, max_length=16, return_tensors="pt"),
         dict(padding=True, truncation=True, return_tensors="pt"),
         dict(padding=True, truncation=True, max_length=3, return_tensors="pt"), dict(), dict(max_length=7),
         dict(padding=True)]


@pytest.fixture(scope="module", params=["tiny_hf", "world"])
def tokenizer_folder(request, tmp_path_factory):
    if request.param == "tiny_hf":
        return request.getfixturevalue("tiny_hf")  # model_max_length: transformers' "no limit"
    from vlmbias.world.tokenizer import build_tokenizer
    folder = tmp_path_factory.mktemp("world_tok")
    build_tokenizer(["a photo of a doctor", "the nurse is smiling", "ein foto einer ärztin"] * 4, folder, 40, 16)
    return folder


def _same(a, b) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_tokenizer_equal_to_transformers(tokenizer_folder):
    from transformers import AutoTokenizer

    ref, own = AutoTokenizer.from_pretrained(str(tokenizer_folder)), load_clip_tokenizer(tokenizer_folder)
    assert isinstance(own, ClipTokenizer)
    assert (len(own), own.model_max_length, own.bos_token_id, own.eos_token_id, own.pad_token_id) == \
           (len(ref), ref.model_max_length, ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    for kw in CALLS:
        for batch in [TEXTS, TEXTS[5:9], TEXTS[3]] + [[t] for t in TEXTS[:15]]:
            want, got = ref(batch, **kw), own(batch, **kw)
            assert all(_same(want[k], got[k]) for k in ("input_ids", "attention_mask")), (kw, batch[:2])
    ids = own(["a photo"])["input_ids"][0]
    assert own.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)  # via transformers


def test_tokenizer_output_moves_like_transformers(tiny_hf):
    toks = load_clip_tokenizer(tiny_hf)(["a", "b c"], padding=True, truncation=True, return_tensors="pt").to("cpu")
    assert toks["input_ids"].dtype == torch.long and toks["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def _tokenizer_copy(src, dst, edit_spec=None, edit_config=None):
    dst.mkdir()
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    (edit_spec or (lambda s: None))(spec)
    (edit_config or (lambda c: None))(config)
    (dst / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    (dst / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


@pytest.mark.parametrize("edit_spec, edit_config", [
    (None, None),  # the copy itself loads: the edits below are what makes the others fall back
    (lambda s: s["normalizer"]["normalizers"].pop(), None),
    (lambda s: s.update(truncation={"direction": "Left", "max_length": 5, "strategy": "LongestFirst", "stride": 0}), None),
    (lambda s: s["added_tokens"].append({**s["added_tokens"][0], "id": 0, "content": "!"}), None),
    (lambda s: s["post_processor"].update(trim_offsets=True), None),
    (lambda s: s["model"].update(end_of_word_suffix=""), None),
    (None, lambda c: c.update(do_lower_case=False)),
    (None, lambda c: c.update(bos_token="<s>")),
    (None, lambda c: c.update(model_max_length="77")),
    (None, lambda c: c.update(tokenizer_class="BertTokenizer")),
])
def test_unusual_tokenizers_fall_back(tiny_hf, tmp_path, edit_spec, edit_config):
    folder = _tokenizer_copy(tiny_hf, tmp_path / "t", edit_spec, edit_config)
    assert (load_clip_tokenizer(folder) is not None) == (edit_spec is None and edit_config is None)


def test_tokenizer_extra_files_fall_back(tiny_hf, tmp_path):
    assert load_clip_tokenizer(tmp_path) is None
    folder = _tokenizer_copy(tiny_hf, tmp_path / "t")
    (folder / "special_tokens_map.json").write_text("{}")
    assert load_clip_tokenizer(folder) is None


def test_hf_parts_use_own_tokenizer_and_preprocessing(tiny_hf):
    model, tokenizer, processor = load_hf_parts(str(tiny_hf), torch.float32)
    assert isinstance(tokenizer, ClipTokenizer) and isinstance(processor._get(), ClipPreprocessor)


def test_tokenizing_a_folder_never_imports_transformers(tiny_hf):
    code = (
        "import sys\nfrom vlmbias.encoders.clip_preprocess import load_clip_tokenizer\n"
        f"t = load_clip_tokenizer({str(tiny_hf)!r})\n"
        "x = t(['a photo', ''], padding=True, truncation=True, max_length=8, return_tensors='pt')\n"
        "assert x['input_ids'].shape[0] == 2 and x['attention_mask'][1].sum() == 2, x\n"
    )
    assert _heavy_modules_imported_by(code) == "[]"
