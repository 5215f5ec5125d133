"""What every encoder backend shares and needs nothing else: reading features off a model output."""
from __future__ import annotations

import torch


def features(out) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output holds the projected features
    return out if isinstance(out, torch.Tensor) else out.pooler_output
