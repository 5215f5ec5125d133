"""Mitigation: image acquisition, labelling, fine-tuning and training-free debiasing, their quality,
and the before/after comparison."""
