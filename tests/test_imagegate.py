"""The image gate (vlmbias.imagegate) and every path that opens an image through it: a
decompression bomb, and any image over the configured limit, is refused with one sentence."""
import io
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.imagegate import DEFAULT_MAX_PIXELS, ImageRefused, check_limit, open_image, refusal

SMALL_LIMIT = 1000  # a 64 x 64 image (4096 pixels) is over it


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "plain.png"
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), np.uint8)).save(path)
    return path


def refused_cases(bomb_png, plain):
    """(image, limit): the bomb under the default limit, an ordinary image under a small configured one."""
    return [(bomb_png, DEFAULT_MAX_PIXELS), (plain, SMALL_LIMIT)]


# ---------------------------------------------------------------------------------------- the gate

def test_bomb_refused_before_decoding(bomb_png):
    with pytest.raises(ImageRefused) as e:
        open_image(bomb_png)
    assert str(e.value) == refusal(DEFAULT_MAX_PIXELS)
    assert isinstance(e.value, VlmbiasError)
    with pytest.raises(ImageRefused, match="more than 40000000 pixels"):
        open_image(bomb_png.read_bytes())  # bytes go through the same door


def test_limit_is_read_from_the_header(plain):
    with pytest.raises(ImageRefused) as e:
        open_image(plain, 64 * 64 - 1)
    assert str(e.value) == refusal(64 * 64 - 1) and "images.max_pixels" in str(e.value)
    assert open_image(plain, 64 * 64).size == (64, 64)  # the limit itself passes


def test_pil_warning_range_refused_with_the_same_sentence(tmp_path):
    # Over PIL's warning threshold: PIL warns inside Image.open, before the gate reads the size;
    # the refusal must still be the gate's sentence, not PIL's warning text.
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 5000
        path = tmp_path / "mid.png"
        Image.new("L", (100, 100)).save(path)  # 10000 px: over PIL's 5000, under twice it
        with pytest.raises(ImageRefused) as e:
            open_image(path, 4000)
        assert str(e.value) == refusal(4000)
    finally:
        Image.MAX_IMAGE_PIXELS = old


@pytest.mark.parametrize("bad", [0, -5, 1.5, "40000000", True, Image.MAX_IMAGE_PIXELS + 1])
def test_bad_limits_name_the_config_key(bad):
    with pytest.raises(VlmbiasError, match=r"images\.max_pixels must be an integer"):
        check_limit(bad)


def test_truncated_file_fails_at_decode(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with Image.open(path) as img:  # the header alone reads fine ...
        assert img.size == (64, 64)
    with pytest.raises(OSError):  # ... the gate decodes fully, so the damage shows here
        open_image(path)


@pytest.mark.parametrize("mode, fmt, colour", [("CMYK", "JPEG", (0, 255, 255, 0)), ("L", "PNG", 76),
                                               ("RGBA", "PNG", (255, 0, 0, 128)), ("P", "GIF", None)])
def test_modes_are_converted_to_rgb(tmp_path, mode, fmt, colour):
    path = tmp_path / f"x.{fmt.lower()}"
    img = Image.new(mode, (8, 6), colour) if colour is not None else Image.new("RGB", (8, 6), (255, 0, 0)).convert("P")
    img.save(path, format=fmt)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (8, 6) and out.format == fmt
    r, g, b = out.getpixel((3, 3))
    if mode in ("CMYK", "RGBA", "P"):  # red in each: CMYK (0, 1, 1, 0), RGBA red at half alpha, a red palette
        assert r > 200 and g < 40 and b < 40
    else:
        assert r == g == b == 76
    kept = open_image(path, mode=None)
    assert kept.mode == (mode if fmt != "GIF" else "P")


def test_exif_orientation_applied_on_request(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (40, 20), (0, 0, 255)).save(path, exif=exif)
    assert open_image(path).size == (40, 20)
    assert open_image(path, exif_transpose=True).size == (20, 40)


def test_result_is_detached_from_the_file(tmp_path, plain):
    img = open_image(plain, mode=None)
    assert img.getpixel((0, 0)) == (200, 30, 30)  # still usable after the file was closed


# ---------------------------------------------------------------------------- every caller refuses

def test_embed_refuses(bomb_png, plain, tiny_hf):
    from vlmbias.audit.embed import embed_image_files
    from vlmbias.encoders.models import load_encoder

    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    ok = plain.with_name("ok.png")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(ok)
    for image, limit in refused_cases(bomb_png, plain):
        emb, kept, bad = embed_image_files(enc, [str(ok), str(image)], num_workers=0, progress=False,
                                           max_pixels=limit)
        assert kept == [0] and emb.shape[0] == 1
        assert [i for i, _ in bad] == [1] and refusal(limit) in bad[0][1]


def test_embed_stage_lists_refused_image_in_skipped(bomb_png, fairface_dir, tiny_hf):
    from vlmbias.audit.data import build_manifest
    from vlmbias.audit.embed import embed_images
    from vlmbias.encoders.models import load_encoder

    manifest = build_manifest({"type": "fairface", "root": str(fairface_dir)})[0]
    manifest = pd.concat([manifest, pd.DataFrame({"image_id": ["bomb"], "path": [str(bomb_png)]})], ignore_index=True)
    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    _, rows, skipped = embed_images(manifest, enc, num_workers=0, max_bad_fraction=0.5)
    assert skipped["image_id"].tolist() == ["bomb"] and refusal(DEFAULT_MAX_PIXELS) in skipped["reason"].iat[0]
    assert "bomb" not in set(rows["image_id"])


def test_acquire_refuses(bomb_png, plain, tmp_path):
    from vlmbias.mitigate.acquire import acquire, check_image

    for image, limit in refused_cases(bomb_png, plain):
        assert check_image(image.read_bytes(), 10 ** 7, limit) == ("too-large", refusal(limit), None)
    root = tmp_path / "src"
    (root / "kw").mkdir(parents=True)
    (root / "kw" / "bomb.png").write_bytes(bomb_png.read_bytes())
    (root / "kw" / "ok.png").write_bytes(plain.read_bytes())
    df = acquire({"source": "folder", "root": str(root), "keywords": ["kw"]}, tmp_path / "img", progress=False)
    rows = df.set_index(df["origin"].str.rsplit("/", n=1).str[1])
    assert rows.loc["bomb.png", "status"] == "too-large" and rows.loc["bomb.png", "reason"] == refusal(DEFAULT_MAX_PIXELS)
    assert rows.loc["ok.png", "status"] == "ok"
    with pytest.raises(VlmbiasError, match="every candidate was rejected"):  # the small limit refuses both
        acquire({"source": "folder", "root": str(root), "keywords": ["kw"]}, tmp_path / "img2", progress=False,
                max_pixels=SMALL_LIMIT)
    journal = pd.read_parquet(tmp_path / "img2" / ".acquire-journal.parquet")
    assert set(journal["reason"]) == {refusal(SMALL_LIMIT)}


def test_acquire_spec_max_pixels_points_to_the_config_key(tmp_path):
    from vlmbias.mitigate.acquire import acquire

    with pytest.raises(VlmbiasError, match="images.max_pixels"):
        acquire({"source": "urls", "keywords": ["x"], "max_pixels": 10}, tmp_path)


def test_grid_tile_refuses(bomb_png, plain, tmp_path, caplog):
    from vlmbias.plots import image_grid

    rankings = pd.DataFrame({"query_id": ["q", "q"], "query": ["a doctor"] * 2, "rank": [1, 2],
                             "image_id": ["img", "other"], "gender": ["Male", "Female"]})
    for n, (image, limit) in enumerate(refused_cases(bomb_png, plain)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vlmbias.plots"):
            out = image_grid(rankings, "q", 2, tmp_path / f"grid{n}.png", paths={"img": str(image), "other": str(plain)},
                             max_pixels=limit)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == (1 if limit == DEFAULT_MAX_PIXELS else 2)  # the small limit refuses both tiles
        assert all(refusal(limit) in w for w in warnings)
        assert out.is_file()


def test_training_load_pixels_refuses(bomb_png, plain):
    from vlmbias.training import load_pixels

    def processor(images, return_tensors):
        return {"pixel_values": torch.stack([torch.from_numpy(np.asarray(i.resize((8, 8)), np.float32)) for i in images])}

    assert load_pixels([str(plain)], processor).shape == (1, 8, 8, 3)
    for image, limit in refused_cases(bomb_png, plain):
        with pytest.raises(VlmbiasError) as e:
            load_pixels([str(plain), str(image)], processor, ids=["a", "b"], max_pixels=limit)
        assert refusal(limit) in str(e.value) and str(image) in str(e.value)


def test_world_pixel_stats_refuses(bomb_png, plain):
    from vlmbias.world.model import _pixel_stats

    for image, limit in refused_cases(bomb_png, plain):
        with pytest.raises(VlmbiasError) as e:
            _pixel_stats([str(image)], max_pixels=limit)
        assert refusal(limit) in str(e.value) and str(image) in str(e.value)
