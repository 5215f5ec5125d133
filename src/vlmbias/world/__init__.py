"""The calibration world: a synthetic world with a planted bias, the small CLIP trained on it, and
the checks that the audit finds what was planted."""
