"""The training core shared by the world's CLIP and the LoRA fine-tuning."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlmbias import VlmbiasError
from vlmbias.training import contrastive_loss, deterministic, load_pixels, train_steps


def test_distinct_groups_are_clips_loss():
    img, txt = torch.randn(3, 4), torch.randn(3, 4)
    logits = 10 * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    plain = (torch.nn.functional.cross_entropy(logits, torch.arange(3))
             + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))) / 2
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0), plain)
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, torch.tensor([5, 1, 2])), plain)


def test_soft_targets_by_hand():
    # two rows share a group: each row's target puts 1/2 on both, so the loss is the mean of
    # -log softmax over the two positives, computed here by hand
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = float(contrastive_loss(a, b, 2.0, torch.tensor([0, 0, 1])))
    e2, e0 = math.exp(2.0), 1.0
    row_pos = -(0.5 * math.log(e2 / (2 * e2 + e0)) * 2)  # rows 0, 1: two equal positives
    row_last = -math.log(e2 / (e2 + 2 * e0))             # row 2: one positive
    want = (2 * row_pos + row_last) / 3                   # symmetric: both directions equal here
    assert got == pytest.approx(want, rel=1e-6)


def test_deterministic_restores_torch_settings():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with deterministic(1):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == 1
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    with pytest.raises(VlmbiasError, match="threads must be an integer >= 1"):
        with deterministic(0):
            pass


def _quadratic(total_steps, lr=0.1, start=3.0):
    w = torch.nn.Parameter(torch.tensor([start]))
    opt = torch.optim.SGD([w], lr=lr)
    data = torch.arange(4)

    def step(idx):
        loss = (w ** 2).sum() * len(idx)
        return {"loss": loss, "half": loss / 2}

    log, steps = train_steps(step, lambda epoch: data.split(2), opt, epochs=3, total_steps=total_steps,
                             progress=False)
    return w, log, steps


def test_train_steps_counts_and_logs():
    w, log, steps = _quadratic(total_steps=5)
    # 2 batches an epoch, capped at 5 steps: 2 + 2 + 1; SGD on 2 w^2 multiplies w by (1 - 0.4) each step
    assert steps == 5
    assert log["step_count"].tolist() == [2, 2, 1]
    assert list(log.columns) == ["epoch", "step_count", "loss", "half", "seconds"]
    assert float(w.detach()) == pytest.approx(3.0 * 0.6 ** 5)
    np.testing.assert_allclose(log["half"], log["loss"] / 2)
    assert log["loss"].iloc[0] == pytest.approx((2 * 9.0 + 2 * (3 * 0.6) ** 2) / 2)


def test_train_steps_stops_on_non_finite_loss():
    with pytest.raises(VlmbiasError, match="loss became nan"):
        w = torch.nn.Parameter(torch.tensor([1.0]))
        train_steps(lambda idx: {"loss": w.sum() * float("nan")}, lambda e: [torch.arange(2)],
                    torch.optim.SGD([w], lr=0.1), epochs=1, total_steps=1, progress=False)


def test_load_pixels_names_every_bad_image(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(good)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")

    class Processor:  # the CLIPImageProcessor call signature
        def __call__(self, images, return_tensors):
            return {"pixel_values": torch.tensor(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)}

    px = load_pixels([str(good)], Processor())
    assert px.dtype == torch.float32 and px.shape == (1, 3, 8, 8) and float(px[0, 2, 0, 0]) == 30.0
    paths = pd.Series([str(good), str(tmp_path / "broken.jpg"), str(tmp_path / "missing.png")])
    with pytest.raises(VlmbiasError, match=r"2 world image\(s\) cannot be read: b \(.*broken.jpg.*; c \("):
        load_pixels(paths.tolist(), Processor(), ids=["a", "b", "c"], what="world")
