"""Offline tests of vlmbias.plots: small hand-made tables and generated images."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmbias import VlmbiasError, plots
from vlmbias.plots import base as plot_base
from vlmbias.plots import (
    grid_size,
    grids,
    image_grid,
    plot_before_after,
    plot_calibration,
    plot_disparity_heatmap,
    plot_distributions,
    plot_losses,
    query_grids,
    safe_name,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GENDER = ["Male", "Female"]
RACE = ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian"]
QUERIES = {"q_doctor": "a doctor", "q_nurse": "a photo of a nurse who works in a very large hospital in the city",
           "q_ceo_ar": "الرئيس التنفيذي", "q_ceo_zh": "一位執行長"}


def classes_table(queries=QUERIES, ks=(20,), seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for qid, text in queries.items():
        for k in ks:
            for attr, cls, base in (("gender", GENDER, [0.5288, 0.4712]), ("race", RACE, [1 / 7] * 7)):
                counts = rng.multinomial(k, rng.dirichlet(np.ones(len(cls))))
                for c, n, b in zip(cls, counts, base):
                    p = n / k
                    rows.append(dict(model="m", dataset="d", query_set="s", query_id=qid, query=text, k=k,
                                     attribute=attr, **{"class": c}, count=n, proportion=p,
                                     proportion_low=max(0.0, p - 0.15), proportion_high=min(1.0, p + 0.15),
                                     dataset_proportion=b))
    return pd.DataFrame(rows)


def summary_table(queries=QUERIES, k=20) -> pd.DataFrame:
    rows = []
    for i, (qid, text) in enumerate(queries.items()):
        for attr in ("gender", "race", "age"):
            rows.append(dict(query_id=qid, query=text, k=k, attribute=attr, fd=1.0 + i,
                             ndkl_dataset=0.1 * i, max_skew_dataset=0.3 * i))
    t = pd.DataFrame(rows)
    t.loc[0, "fd"] = np.inf   # a query that retrieved one class only (strict FD)
    t.loc[1, "fd"] = np.nan
    return t


def assert_png(path, min_side=100) -> tuple[int, int]:
    path = Path(path)
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert w >= min_side and h >= min_side, (w, h)
    assert w < 20000 and h < 20000, (w, h)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp.png")], "temporary file left behind"
    return w, h


@pytest.fixture()
def images(tmp_path):
    """Ten tiny images (PNG and JPEG, one RGBA, one grayscale) plus one corrupt and one truncated file."""
    d = tmp_path / "imgs"
    d.mkdir()
    paths = {}
    for i in range(10):
        colour = (25 * i, 255 - 25 * i, 120)
        if i == 3:
            im = Image.new("RGBA", (40, 30), colour + (128,))
        elif i == 4:
            im = Image.new("L", (30, 40), 90)
        else:
            im = Image.new("RGB", (32 + i, 32), colour)
        p = d / (f"{i}.png" if i % 2 else f"{i}.jpg")
        im.save(p)
        paths[f"val/{i}.jpg"] = str(p)
    (d / "corrupt.jpg").write_bytes(b"this is not an image at all")
    paths["val/corrupt.jpg"] = str(d / "corrupt.jpg")
    good = (d / "0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    paths["val/truncated.jpg"] = str(d / "truncated.jpg")
    return paths


def rankings_table(image_ids, queries=("q_doctor",), texts=None) -> pd.DataFrame:
    rows = []
    for qid in queries:
        for r, iid in enumerate(image_ids, start=1):
            rows.append(dict(model="m", dataset="d", query_set="s", query_id=qid,
                             query=(texts or {}).get(qid, qid), lang="en", concept="", rank=r, image_id=iid,
                             score=0.3 - 0.01 * r, gender=GENDER[r % 2], race=RACE[r % 7], age="20-29"))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
def test_distributions_all_queries_and_non_latin(tmp_path, caplog):
    classes = classes_table()
    with caplog.at_level(logging.WARNING, logger="vlmbias.plots"), warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'Glyph missing' UserWarning leaks out
        for attr in ("gender", "race"):
            w, h = assert_png(plot_distributions(classes, attr, 20, tmp_path / "sub" / f"bars_{attr}.png"), 300)
            assert w > h / 3
    # a single query, and a custom title in Chinese
    one = classes[classes.query_id == "q_ceo_zh"]
    assert_png(plot_distributions(one, "race", 20, tmp_path / "one.png", title="一位執行長 (k=20)"), 150)


def test_distributions_many_queries_no_figure_leak(tmp_path):
    queries = {f"q{i}": f"query number {i}" for i in range(11)}
    classes = classes_table(queries)
    before = len(matplotlib.pyplot.get_fignums())
    for i in range(3):
        assert_png(plot_distributions(classes, "race", 20, tmp_path / f"many{i}.png"), 300)
    assert len(matplotlib.pyplot.get_fignums()) == before


def test_distributions_keeps_class_order_and_overwrites(tmp_path):
    classes = classes_table({"q": "a doctor"})
    out = tmp_path / "bars.png"
    out.write_bytes(b"old")
    plot_distributions(classes.iloc[::-1], "gender", 20, out)  # reversed input order is allowed
    assert_png(out)


def test_distributions_input_errors(tmp_path):
    classes = classes_table({"q": "a doctor"})
    with pytest.raises(ValueError, match="proportion_high"):
        plot_distributions(classes.drop(columns=["proportion_high"]), "gender", 20, tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plot_distributions(classes.iloc[:0], "gender", 20, tmp_path / "x.png")
    with pytest.raises(ValueError, match="k=200"):
        plot_distributions(classes, "gender", 200, tmp_path / "x.png")
    with pytest.raises(ValueError, match="skin"):
        plot_distributions(classes, "skin", 20, tmp_path / "x.png")
    with pytest.raises(ValueError, match="several rows"):
        plot_distributions(pd.concat([classes, classes]), "gender", 20, tmp_path / "x.png")
    with pytest.raises(VlmbiasError):  # also a VlmbiasError, so the CLI prints one line
        plot_distributions(classes.iloc[:0], "gender", 20, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_heatmap(tmp_path):
    s = summary_table()
    for metric in ("fd", "ndkl_dataset", "max_skew_dataset"):
        assert_png(plot_disparity_heatmap(s, metric, 20, tmp_path / f"heat_{metric}.png"), 150)
    with pytest.raises(ValueError, match="fd_strict"):
        plot_disparity_heatmap(s, "fd_strict", 20, tmp_path / "h.png")
    with pytest.raises(ValueError, match="empty"):
        plot_disparity_heatmap(s.iloc[:0], "fd", 20, tmp_path / "h.png")
    with pytest.raises(ValueError, match="k=5"):
        plot_disparity_heatmap(s, "fd", 5, tmp_path / "h.png")
    one = s.iloc[[2]].assign(fd=np.nan)  # one all-missing cell still draws
    assert_png(plot_disparity_heatmap(one, "fd", 20, tmp_path / "one.png"), 100)


def test_grid_size_formula():
    # 5 columns of 96 px with 4 px gaps; captions 16 px per line (rank + 2 labels); title band 40 px
    assert grid_size(20, 5, 96, 2) == (4 + 5 * 100, 40 + 4 * (96 + 48 + 4) + 4)
    assert grid_size(3, 5, 96, 2)[0] == 4 + 3 * 100      # fewer images than columns: narrower
    assert grid_size(7, 3, 50, 0) == (4 + 3 * 54, 2 * (13 + 2) + 4 + 3 * (50 + 13 + 4) + 4)


@pytest.mark.parametrize("k,ncols", [(7, 3), (10, 5), (1, 5), (4, 1)])
def test_image_grid_dimensions(tmp_path, images, k, ncols):
    ids = [f"val/{i}.jpg" for i in range(10)]
    r = rankings_table(ids)
    out = image_grid(r, "q_doctor", k, tmp_path / "g.png", ncols=ncols, thumb=48, paths=images)
    with Image.open(out) as im:
        assert im.size == grid_size(k, ncols, 48, 2)
        cols = min(k, ncols)
        assert im.size[0] == 4 + cols * 52
        assert im.size[1] == grid_size(1, 1, 48, 2)[1] + (int(np.ceil(k / cols)) - 1) * (48 + 3 * 13 + 4)


def test_image_grid_accepts_manifest_and_path_column(tmp_path, images):
    ids = [f"val/{i}.jpg" for i in range(6)]
    r = rankings_table(ids)
    manifest = pd.DataFrame({"image_id": list(images), "path": list(images.values()), "gender": "Male"})
    a = image_grid(r, "q_doctor", 6, tmp_path / "a.png", paths=manifest)
    b = image_grid(r.assign(path=r.image_id.map(images)), "q_doctor", 6, tmp_path / "b.png")
    c = image_grid(r, "q_doctor", 6, tmp_path / "c.png", 3, ("race",), 64, paths=images)
    for p in (a, b, c):
        assert_png(p, 60)
    assert Image.open(a).size == Image.open(b).size == grid_size(6, 5, 96, 2)
    assert Image.open(c).size == grid_size(6, 3, 64, 1)
    with pytest.raises(ValueError, match="path"):
        image_grid(r, "q_doctor", 6, tmp_path / "d.png")
    with pytest.raises(ValueError, match="nope"):
        image_grid(r, "nope", 6, tmp_path / "d.png", paths=images)
    with pytest.raises(ValueError, match="image_id"):
        image_grid(r.drop(columns=["image_id"]), "q_doctor", 6, tmp_path / "d.png", paths=images)


def test_image_grid_corrupt_images_become_grey_tiles(tmp_path, images, caplog):
    ids = ["val/0.jpg", "val/corrupt.jpg", "val/truncated.jpg", "val/not-in-manifest.jpg", "val/1.jpg"]
    images = {**images, "val/gone.jpg": str(tmp_path / "does-not-exist.jpg")}
    ids.append("val/gone.jpg")
    r = rankings_table(ids)
    thumb = 64
    with caplog.at_level(logging.WARNING, logger="vlmbias.plots"):
        out = image_grid(r, "q_doctor", 6, tmp_path / "g.png", ncols=6, thumb=thumb, paths=images)
    assert "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text and "does-not-exist" in caplog.text
    im = np.asarray(Image.open(out).convert("RGB"))
    top = 2 * (grids._grid_fonts(thumb)[1] + 2) + grids.GRID_PAD
    for i in (1, 2, 3, 5):  # the unreadable, truncated, unknown and missing files
        x = grids.GRID_PAD + i * (thumb + grids.GRID_PAD)
        corner = im[top + 3: top + 12, x + 20: x + 44]  # away from the diagonals and the label
        assert (np.abs(corner.astype(int) - 128) <= 25).all(), i
    x0 = grids.GRID_PAD
    tile0 = im[top + 5: top + 20, x0 + 5: x0 + 20].astype(int)
    assert (np.abs(tile0 - np.array([0, 255, 120])) <= 12).all()  # the readable image is drawn


def test_query_grids_safe_unique_names(tmp_path, images):
    ids = [f"val/{i}.jpg" for i in range(5)]
    qids = ["../../etc/passwd", "一位医生", "a doctor", "A Doctor", "a/doctor", "..", "C:\\x", "q" * 300]
    r = rankings_table(ids, qids, texts={"一位医生": "一位医生", "../../etc/passwd": "a doctor"})
    out_dir = tmp_path / "grids"
    made = query_grids(r, pd.DataFrame({"image_id": list(images), "path": list(images.values())}), 5, out_dir,
                       ncols=5, thumb=48)
    assert len(made) == len(qids) == len({p.name for p in made})
    for p in made:
        assert p.parent == out_dir
        assert re.fullmatch(r"grid_[a-z0-9-]+-[0-9a-f]{8,40}\.png", p.name), p.name
        assert p.name.isascii() and len(p.name) < 100
        assert_png(p, 40)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in made)
    assert not (tmp_path / "etc").exists()
    # the name depends only on the id: stable across runs
    assert safe_name("一位医生") == safe_name("一位医生") != safe_name("一位护士")
    assert safe_name("../../etc/passwd").startswith("etc-passwd-")
    assert safe_name("a doctor") != safe_name("A Doctor")


def test_non_latin_grid_titles(tmp_path, images):
    r = rankings_table(["val/0.jpg", "val/1.jpg"], ["q_ar", "q_zh"],
                       texts={"q_ar": "الرئيس التنفيذي لشركة كبيرة جدا", "q_zh": "一位執行長" * 12})
    for q in ("q_ar", "q_zh"):
        assert_png(image_grid(r, q, 2, tmp_path / f"{q}.png", paths=images), 60)


def test_before_after(tmp_path):
    before = classes_table(seed=1)
    after = classes_table(seed=2)
    for attr in ("gender", "race"):
        assert_png(plot_before_after(before, after, attr, 20, tmp_path / f"ba_{attr}.png",
                                     labels=("before", "lora")), 200)
    # without interval or dataset columns, and with only part of the queries after
    slim = after[after.query_id.isin(["q_doctor"])].drop(columns=["proportion_low", "proportion_high",
                                                                    "dataset_proportion"])
    assert_png(plot_before_after(before, slim, "gender", 20, tmp_path / "slim.png"), 100)
    with pytest.raises(ValueError, match="no query_id in both"):
        plot_before_after(before, after.assign(query_id="other"), "gender", 20, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'proportion'"):
        plot_before_after(before, after.drop(columns=["proportion"]), "gender", 20, tmp_path / "x.png")


def test_figures_drawn_in_two_processes_equal_those_drawn_in_one(tmp_path):
    from vlmbias.mitigate.compare import draw_all

    before, after = classes_table(seed=1), classes_table(seed=2)
    for processes in (1, 2):
        figures = [(before, after, attr, 20, tmp_path / f"{processes}_{attr}.png", ("before", "lora"))
                   for attr in ("gender", "race")]
        draw_all(plot_before_after, figures, processes)
    for attr in ("gender", "race"):
        assert (tmp_path / f"1_{attr}.png").read_bytes() == (tmp_path / f"2_{attr}.png").read_bytes()
    broken = [(before, after.assign(query_id="other"), "gender", 20, tmp_path / "x.png", ("a", "b"))] * 2
    with pytest.raises(ValueError, match="no query_id in both"):  # a figure that fails in a worker fails the job
        draw_all(plot_before_after, broken, 2)


def test_calibration(tmp_path):
    rng = np.random.default_rng(0)
    planted = np.tile([0.5, 0.6, 0.7, 0.8, 0.9], 2)
    measured = np.clip(planted * 0.8 + rng.normal(0, 0.03, planted.size), 0, 1)
    t = pd.DataFrame({"planted": planted, "measured": measured, "low": measured - 0.1, "high": measured + 0.1,
                      "metric": ["top-200 share"] * 5 + ["top-20 share"] * 5, "parity": 0.5})
    assert_png(plot_calibration(t, tmp_path / "cal.png"), 200)
    # the column names calibrate.py passes
    t2 = t.rename(columns={"planted": "x", "measured": "y", "low": "lo", "high": "hi"})
    assert_png(plot_calibration(t2, tmp_path / "cal2.png", x="x", y="y", low="lo", high="hi", hue="metric"), 200)
    # values outside 0-1 (an association score) widen the axes instead of hiding points
    assert_png(plot_calibration(t.assign(measured=t.measured * 3, high=t.high * 3), tmp_path / "cal3.png"), 200)
    with pytest.raises(ValueError, match="'metric'"):
        plot_calibration(t.drop(columns=["metric"]), tmp_path / "x.png")


def test_losses(tmp_path):
    log = pd.DataFrame({"epoch": [1, 2, 3], "step_count": [10, 10, 10], "loss": [3.0, 2.0, 1.5],
                        "gender": [1.0, 0.7, 0.5], "race": [1.8, 1.2, 0.9], "seconds": [4.0, 4.1, 4.0]})
    assert_png(plot_losses(log, tmp_path / "loss.png"), 150)
    assert_png(plot_losses(log[["epoch", "loss"]].iloc[:1], tmp_path / "one.png"), 100)
    with pytest.raises(ValueError, match="epoch"):
        plot_losses(log.drop(columns=["epoch"]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no numeric loss column"):
        plot_losses(log[["epoch", "seconds"]], tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plot_losses(log.iloc[:0], tmp_path / "x.png")


def test_audit_cli(tmp_path, images):
    classes = classes_table({"q_doctor": "a doctor", "q_zh": "一位医生"})
    summary = summary_table({"q_doctor": "a doctor", "q_zh": "一位医生"})
    ids = [f"val/{i}.jpg" for i in range(6)]
    rankings = rankings_table(ids, ["q_doctor", "q_zh"])
    manifest = pd.DataFrame({"image_id": list(images), "path": list(images.values())})
    paths = {}
    for name, t in (("classes", classes), ("summary", summary)):
        paths[name] = tmp_path / f"{name}.csv"
        t.to_csv(paths[name], index=False)
    for name, t in (("rankings", rankings), ("manifest", manifest)):
        paths[name] = tmp_path / f"{name}.parquet"
        t.to_parquet(paths[name], index=False)
    out = tmp_path / "figs"
    plots.main(["audit", *(x for n, p in paths.items() for x in (f"--{n}", str(p))), "--out", str(out),
                "--bar-k", "20", "--grid-k", "6", "--grid-cols", "3"])
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("bars_")] == ["bars_gender.png", "bars_race.png"]
    assert len([n for n in names if n.startswith("heatmap_")]) == 3
    assert len([n for n in names if n.startswith("grid_")]) == 2
    for n in names:
        assert_png(out / n, 60)


def test_font_fallback_and_missing_glyph_warning(caplog):
    fonts = plot_base._installed_fonts()
    preferred = set().union(*(plot_base._charmap(p) for _, p, pref in fonts if pref))
    extra = [(name, c) for name, p, pref in fonts if not pref
             for c in sorted(plot_base._charmap(p) - preferred)
             if c > 127 and plot_base._needed_chars([chr(c)])]
    if extra:  # a glyph only a non-preferred font has: that font joins the family list
        name, c = extra[0]
        assert name in plot_base._families_for([chr(c)])
    rare = "\U00010C80\U00010C81"  # Old Hungarian: almost never installed
    if not any(ord(rare[0]) in plot_base._charmap(p) for _, p, _ in fonts):
        with caplog.at_level(logging.WARNING, logger="vlmbias.plots"):
            plot_base._families_for([rare])
            plot_base._families_for([rare])
        assert caplog.text.count("no installed font has glyphs") == 1


def test_confusion_heatmap_is_drawn(tmp_path):
    t = pd.DataFrame({"k": 20, "attribute": "race", "named_class": ["Black", "Black", "White", "White"],
                      "retrieved_class": ["Black", "White", "Black", "White"], "count": [15, 5, 0, 20],
                      "share": [0.75, 0.25, 0.0, 1.0]})
    out = plots.plot_confusion(t, "race", 20, tmp_path / "c.png")
    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    with pytest.raises(plots.PlotInputError, match="no rows with"):
        plots.plot_confusion(t, "gender", 20, tmp_path / "x.png")


CJK_TITLE = "一位首席执行官"   # "a CEO" in simplified Chinese, as in the default run's language experiment
ARABIC_TITLE = "مدير تنفيذي"  # "a CEO" in Arabic


def test_cjk_and_arabic_titles_render_without_missing_glyphs(tmp_path, caplog):
    """The shipped Noto fonts cover the scripts of the default run's queries: matplotlib, drawing
    with the families figure_style picks, warns about no missing glyph and no box is logged."""
    texts = [CJK_TITLE, ARABIC_TITLE]
    families, missing = plot_base._families_for_chars(frozenset(plot_base._needed_chars(texts)))
    assert not missing, f"no font for {sorted(missing)}"
    assert any("CJK" in f for f in families) and any("Arabic" in f or f == "DejaVu Sans" for f in families)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    with warnings.catch_warnings(record=True) as seen, plt.rc_context(
            {"font.family": plot_base._families_for(texts) + ["sans-serif"]}):
        warnings.simplefilter("always")
        fig = Figure(figsize=(3, 1))
        fig.suptitle(f"{CJK_TITLE} / {ARABIC_TITLE}")
        fig.savefig(tmp_path / "t.png")
    glyph_warnings = [str(w.message) for w in seen if "missing from" in str(w.message)]
    assert not glyph_warnings, glyph_warnings
    # and through a real figure of the workflow, titled in both scripts
    classes = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q2"], "query": [CJK_TITLE] * 2 + [ARABIC_TITLE] * 2,
                            "k": 20, "attribute": "gender", "class": ["Female", "Male"] * 2,
                            "proportion": [0.3, 0.7, 0.5, 0.5], "proportion_low": [0.1, 0.5, 0.3, 0.3],
                            "proportion_high": [0.5, 0.9, 0.7, 0.7], "dataset_proportion": 0.5})
    with caplog.at_level(logging.WARNING, logger="vlmbias.plots"):
        assert_png(plot_distributions(classes, "gender", 20, tmp_path / "bars.png"), 100)
    assert "no installed font has glyphs" not in caplog.text
