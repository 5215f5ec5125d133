"""The `vlmbias` command: audit one model on one dataset from the shell, read calibration results,
list models.

    vlmbias audit --model ViT-B-32:openai --dataset ~/data/fairface --query "a doctor" --query "a nurse"
    vlmbias calibrate                      # PASS/FAIL of the workflow's calibration checks
    vlmbias models [--name ViT-B-32]       # backends, known models, open_clip pretrained tags
    vlmbias --version

The command is a thin front end: it calls the same modules as the Snakemake workflow
(`data.build_manifest`, `models.load_encoder`, `embed`, `retrieve`, `metrics.audit_tables`), and
`calibrate` only reads what the workflow's `calibrate` rule wrote. Image embeddings are cached
per (model, dataset content, precision) so that further queries on the same model and dataset
cost only a text encoding.

Exit codes: 0 ok, 1 failed calibration check(s), 2 user error (bad arguments, missing files,
unloadable model...), printed as one `error: ...` line on stderr.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from vlmbias import VlmbiasError, __version__
from vlmbias.cli import audit, calibrate, models


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout; shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vlmbias", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Audit social bias in CLIP-style vision-language models (text-to-image retrieval).",
        epilog="examples:\n"
               "  vlmbias audit --model ViT-B-32:openai --dataset ~/data/fairface --query \"a doctor\"\n"
               "  vlmbias calibrate\n"
               "  vlmbias models --name ViT-B-32\n\n"
               "The full experiment is a Snakemake workflow: `snakemake --cores 8` (see README.md and docs/).\n"
               "Run `vlmbias COMMAND --help` for each command's options.")
    p.add_argument("--version", action="version", version=f"vlmbias {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in (audit, calibrate, models):
        command.register(sub, _Formatter)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (so captured streams in tests see the messages)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("vlmbias: %(message)s"))


def _setup_logging() -> None:
    """Progress messages of vlmbias's own modules on stderr; other libraries' logging is left alone."""
    logger = logging.getLogger("vlmbias")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vlmbias` console script; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    if a.command is None:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging()
    try:
        return a.func(a)
    except VlmbiasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
