"""vlmbias: reproducible audits of social bias in CLIP-style vision-language models."""

__version__ = "0.1.0"


class VlmbiasError(Exception):
    """An error caused by the user's input or environment, with a message meant to be read as is."""


def __getattr__(name: str):
    # `from vlmbias import metrics` is the documented notebook entry point; the module lives in the audit stage.
    if name == "metrics":
        from vlmbias.audit import metrics

        return metrics
    raise AttributeError(f"module 'vlmbias' has no attribute {name!r}")
