"""A query longer than the text encoder's context is truncated to it, with a warning naming the query."""
import logging

import numpy as np

from vlmbias.encoders.models import load_encoder
from vlmbias.cli import main

LONG = "a photo of a doctor " + " ".join(["who works in a large hospital"] * 15)  # ~100 words


def _tail_is_cut(enc, caplog):
    other_tail = LONG + " and a completely different ending about a nurse"
    with caplog.at_level(logging.WARNING, logger="vlmbias"):
        e = enc.encode_texts([LONG, other_tail, "a doctor"])
    assert np.isfinite(e).all()
    np.testing.assert_allclose(e[0], e[1], atol=1e-6)  # only the first context-length tokens count
    assert not np.allclose(e[0], e[2])
    warned = [r.getMessage() for r in caplog.records if "context length" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith(f"query {LONG!r} is ")
    return warned[0]


def test_hf_tokenizer_without_model_max_length_truncates_to_position_embeddings(tiny_hf, caplog):
    enc = load_encoder({"backend": "hf", "name": str(tiny_hf)})
    msg = _tail_is_cut(enc, caplog)
    assert "more than the model's context length of 64: only its first 64 tokens are encoded" in msg
    caplog.clear()
    enc.encode_texts([LONG])
    assert not [r for r in caplog.records if "context length" in r.getMessage()]  # once per query, not per batch


def test_open_clip_truncation_is_said(tiny_open_clip, caplog):
    msg = _tail_is_cut(load_encoder(tiny_open_clip), caplog)
    assert "context length of 77" in msg


def test_long_query_on_the_command_line_has_no_traceback(tiny_hf, fairface_dir, tmp_path, capsys):
    assert main(["audit", "--model", f"hf:{tiny_hf}", "--dataset", str(fairface_dir), "--cache", str(tmp_path),
                 "--workers", "0", "--n-boot", "20", "--k", "5", "--attributes", "gender", "--query", LONG]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and f"query {LONG!r} is " in err and "top 5" in out
