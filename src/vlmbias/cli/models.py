"""`vlmbias models`: backends, known model names and open_clip pretrained tags, without loading weights."""
from __future__ import annotations

import argparse

from vlmbias import VlmbiasError
from vlmbias.cli.audit import MODEL_FORMS


def cmd_models(a: argparse.Namespace) -> int:
    from vlmbias.encoders.models import BACKENDS, KNOWN_MODELS

    lines = ["backends: " + ", ".join(BACKENDS), "", "known models (as --model takes them):"]
    for backend in BACKENDS:
        for name in KNOWN_MODELS.get(backend, []):
            lines.append(f"  {backend:<10} {'hf:' + name if backend == 'hf' else name}")
    lines += ["", f"--model forms: {MODEL_FORMS}.",
              "Any open_clip architecture or transformers CLIPModel works, not only those listed; "
              "`vlmbias models --name NAME` lists an open_clip architecture's pretrained tags."]
    if a.name:
        import open_clip

        known = open_clip.list_models()
        if a.name not in known:
            import difflib

            close = difflib.get_close_matches(a.name, known, n=8, cutoff=0.5)
            raise VlmbiasError(f"unknown open_clip model {a.name!r}; similar names: {', '.join(close or known[:8])}")
        tags = open_clip.list_pretrained_tags_by_model(a.name)
        lines += ["", f"open_clip pretrained tags of {a.name}:"]
        lines += [f"  {a.name}:{t}" for t in tags] or ["  (none: random weights or a local checkpoint only)"]
    print("\n".join(lines))
    return 0


MODELS_EXAMPLES = """examples:
  vlmbias models
  vlmbias models --name ViT-B-32        # open_clip pretrained tags, e.g. ViT-B-32:openai

Lists names only: no weights are loaded and the network is not used."""


def register(sub, formatter) -> None:
    """Add this command's parser to the `vlmbias` subparsers."""
    s = sub.add_parser("models", help="list backends, known models and open_clip pretrained tags",
                       description="List the encoder backends and known model names, without loading weights.",
                       epilog=MODELS_EXAMPLES, formatter_class=formatter)
    s.add_argument("--name", metavar="ARCH", help="an open_clip architecture whose pretrained tags to list")
    s.set_defaults(func=cmd_models)
