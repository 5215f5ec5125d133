"""vlmbias: reproducible audits of social bias in CLIP-style vision-language models."""

__version__ = "0.1.0"


class VlmbiasError(Exception):
    """An error caused by the user's input or environment, with a message meant to be read as is."""
