"""vlmbias: reproducible audits of social bias in CLIP-style vision-language models."""

__version__ = "0.1.0"


class VlmbiasError(Exception):
    """An error caused by the user's input or environment, with a message meant to be read as is."""


_API = ("audit_model", "AuditResult")


def __getattr__(name: str):
    # Imported on first use, so `import vlmbias` stays light: `vlmbias.audit_model` and
    # `vlmbias.api` (the Python API), `vlmbias.metrics` (the metric functions on class counts).
    if name == "metrics":
        from vlmbias.audit import metrics

        return metrics
    if name == "api" or name in _API:
        import importlib

        api = importlib.import_module("vlmbias.api")  # not `from vlmbias import api`: that calls back here
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'vlmbias' has no attribute {name!r}")
