"""What every figure shares: input checks that name the problem, fonts that cover the text drawn
(CJK, Arabic, ...), matplotlib's style and the atomic PNG writer."""
from __future__ import annotations

import functools
import logging
import textwrap
import unicodedata
import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (rc_context only; figures never go through pyplot)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import ImageFont  # noqa: E402

from vlmbias import VlmbiasError  # noqa: E402
from vlmbias.io import atomic_path  # noqa: E402

log = logging.getLogger("vlmbias.plots")

DPI = 110
# seaborn's "deep" palette, so the bars look like the thesis' seaborn plots
PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd"]
GREY = (128, 128, 128)


class PlotInputError(VlmbiasError, ValueError):
    """A table handed to a plot function cannot be drawn (missing columns, empty, ...)."""


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def require(df, columns, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise PlotInputError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if len(df) == 0:
        raise PlotInputError(f"{what}: the table is empty, nothing to plot")
    if missing:
        raise PlotInputError(f"{what}: missing column(s) {', '.join(map(repr, missing))} "
                             f"(have: {', '.join(map(str, df.columns))})")


def select_rows(df: pd.DataFrame, what: str, **equal) -> pd.DataFrame:
    """Rows where every column equals its value; an empty result is an error naming what exists."""
    mask = np.ones(len(df), bool)
    for col, val in equal.items():
        mask &= (df[col] == val).to_numpy()
    out = df[mask]
    if out.empty:
        have = "; ".join(f"{c} in {sorted(map(str, df[c].dropna().unique()))[:20]}" for c in equal)
        want = ", ".join(f"{c}={v!r}" for c, v in equal.items())
        raise PlotInputError(f"{what}: no rows with {want} ({have})")
    return out


def check_k(k) -> int:
    try:
        k_int = int(k)
    except (TypeError, ValueError):
        raise PlotInputError(f"k must be a positive integer, got {k!r}") from None
    if k_int < 1 or k_int != k:
        raise PlotInputError(f"k must be a positive integer, got {k!r}")
    return k_int


def query_labels(d: pd.DataFrame) -> dict:
    """query_id -> text to show (the `query` column when there is one)."""
    if "query" not in d.columns:
        return {q: str(q) for q in dict.fromkeys(d["query_id"])}
    first = d.drop_duplicates("query_id")
    return {q: (str(t) if pd.notna(t) and str(t) else str(q)) for q, t in zip(first["query_id"], first["query"])}


def wrap_label(text: str, width: int = 28, max_lines: int = 3) -> str:
    text = " ".join(str(text).split())
    lines = textwrap.wrap(text, width=width, max_lines=max_lines, placeholder=" …", break_long_words=True)
    return "\n".join(lines) if lines else text


# ----------------------------------------------------------------------------------------------
# fonts
# ----------------------------------------------------------------------------------------------
# Families tried first, in order, when installed: a Latin font, then broad-coverage fonts for
# CJK, Arabic and other scripts. Anything still missing is searched for in every installed font.
_PREFERRED_FONTS = [
    "DejaVu Sans", "Noto Sans", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK JP",
    "Noto Sans CJK KR", "Noto Sans SC", "Noto Sans TC", "Source Han Sans SC", "Source Han Sans TC",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing TW", "AR PL UMing CN",
    "Noto Sans Arabic", "Noto Naskh Arabic", "Noto Sans Devanagari", "Noto Sans Hebrew", "Noto Sans Thai",
    "Arial Unicode MS", "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans GB", "Arial",
]
_LAST_RESORT = {"Last Resort High-Efficiency", "LastResort", "Last Resort"}
# PyPI packages that ship Noto fonts (project dependencies), registered with matplotlib so figures
# render Chinese, Japanese, Korean, Arabic, Devanagari, ... without any system font installed.
FONT_PACKAGES = ("noto_cjk_sans_otc", "manimgx_fonts")
_FONT_SUFFIXES = (".ttf", ".ttc", ".otf")
_warned_chars: set[str] = set()


@functools.lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset:
    try:
        from matplotlib.ft2font import FT2Font
        return frozenset(FT2Font(path).get_charmap())
    except Exception as e:  # an unreadable font file just covers nothing
        log.debug("cannot read font %s: %s", path, e)
        return frozenset()


@functools.lru_cache(maxsize=1)
def register_packaged_fonts() -> list[str]:
    """Add the fonts of FONT_PACKAGES to matplotlib's font list (once); returns the files added.
    A package that is not installed is skipped: the system fonts are searched as before."""
    import importlib.util

    added = []
    for package in FONT_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            log.debug("font package %s is not installed", package)
            continue
        for folder in spec.submodule_search_locations:
            for path in sorted(Path(folder).iterdir()):
                if path.suffix.lower() in _FONT_SUFFIXES and "Emoji" not in path.name:
                    try:
                        font_manager.fontManager.addfont(str(path))
                        added.append(str(path))
                    except Exception as e:  # a damaged file must not stop a figure
                        log.debug("cannot register font %s: %s", path, e)
    return added


@functools.lru_cache(maxsize=1)
def _installed_fonts() -> tuple:
    """(family, path) of installed fonts: preferred families first (regular faces first), then the rest."""
    register_packaged_fonts()
    entries = [e for e in font_manager.fontManager.ttflist if e.name not in _LAST_RESORT]

    def regular_first(e):
        return (e.style != "normal", abs((e.weight if isinstance(e.weight, int) else 400) - 400), e.fname)

    entries.sort(key=regular_first)
    rank = {n: i for i, n in enumerate(_PREFERRED_FONTS)}
    seen, out = set(), []
    for e in sorted(entries, key=lambda e: rank.get(e.name, len(rank))):
        if e.name not in seen:
            seen.add(e.name)
            out.append((e.name, e.fname, e.name in rank))
    return tuple(out)


def _needed_chars(texts) -> set[str]:
    """Printable non-ASCII characters of the texts (ASCII is always covered by DejaVu Sans)."""
    out = set()
    for t in texts:
        for c in str(t):
            if ord(c) > 127 and unicodedata.category(c)[0] not in "CZM":
                out.add(c)
    return out


def _warn_missing(missing: set[str]) -> None:
    new = missing - _warned_chars
    if new:
        _warned_chars.update(new)
        sample = "".join(sorted(new)[:12])
        log.warning("no installed font has glyphs for %d character(s) (%s%s); they are drawn as boxes. "
                    "Install the font packages vlmbias depends on (%s) or system fonts such as fonts-noto-cjk.",
                    len(new), sample, "…" if len(new) > 12 else "",
                    ", ".join(p.replace("_", "-") for p in FONT_PACKAGES))


@functools.lru_cache(maxsize=256)
def _families_for_chars(chars: frozenset) -> tuple:
    """The families that cover `chars`: installed fonts in preference order (preferred families, then
    every other), each kept only where it has a character the families before it lack, the first
    preferred one (a Latin font) always. Every glyph is drawn by the same font as with the whole list,
    while matplotlib, which looks every glyph up in every listed family, stops paying seconds per
    figure for fonts that draw nothing. Returns (families, characters no font has)."""
    families, missing = [], set(chars)
    for name, path, preferred in _installed_fonts():
        if families and not missing:
            break
        got = {c for c in missing if ord(c) in _charmap(path)}
        if got or (preferred and not families):
            families.append(name)
            missing -= got
    return tuple(families), frozenset(missing)


def _families_for(texts) -> list[str]:
    families, missing = _families_for_chars(frozenset(_needed_chars(texts)))
    if missing:
        _warn_missing(set(missing))
    return list(families) or ["DejaVu Sans"]


@contextmanager
def figure_style(texts=()):
    """rcParams for one figure: fonts that cover `texts`, a light seaborn-like look, and matplotlib's
    per-glyph 'missing from font' warnings silenced (we log one warning ourselves)."""
    rc = {
        "font.family": _families_for(texts) + ["sans-serif"],
        "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "axes.grid.axis": "y", "grid.color": "#dddddd", "grid.linewidth": 0.6,
        "axes.axisbelow": True, "axes.titlesize": 9, "axes.labelsize": 8,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "legend.frameon": False,
        "svg.hashsalt": "vlmbias",
    }
    with plt.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from (current )?font")
        warnings.filterwarnings("ignore", message=r".*[Mm]atplotlib currently does not support .*")
        yield


def save_figure(fig: Figure, out_png) -> Path:
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    fig.clear()
    return out


@functools.lru_cache(maxsize=64)
def _pil_font_cached(path: str | None, size: int):
    if path is None:
        return ImageFont.load_default(size)
    from PIL import features
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    try:
        return ImageFont.truetype(path, size, layout_engine=layout)
    except Exception as e:
        log.debug("PIL cannot load %s (%s); using its default font", path, e)
        return ImageFont.load_default(size)


def pil_font(texts, size: int):
    """A PIL font for `texts`: the installed font that covers most of their characters."""
    chars = _needed_chars(texts)
    best_path, best = None, -1
    fonts = _installed_fonts()
    candidates = [f for f in fonts if f[2]] + [f for f in fonts if not f[2]] if chars else [f for f in fonts if f[2]]
    for name, path, _ in candidates:
        n = sum(ord(c) in _charmap(path) for c in chars)
        if n > best:
            best_path, best = path, n
        if n == len(chars):
            break
    if chars and best < len(chars):
        _warn_missing({c for c in chars if best_path is None or ord(c) not in _charmap(best_path)})
    return _pil_font_cached(best_path, size)


