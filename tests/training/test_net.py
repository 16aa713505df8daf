"""The classifier's peak features, the segmentation loss's per-channel weights and the head
refit's choice (training/net.py, train.py, fit_head.py).  Needs the training extra."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))


def test_peak_features_see_one_small_lesion_and_not_one_stray_voxel():
    from net import TypicalityNet

    maps = torch.zeros(3, 2, 8, 16, 16)
    maps[1, 1, 2:5, 4:7, 4:7] = 1.0          # one 3x3x3 lesion in channel 1 of sample 1
    maps[2, 0, 5, 9, 9] = 1.0                # one stray voxel in channel 0 of sample 2
    f = TypicalityNet.peak_features(maps)
    assert f.shape == (3, 4)                 # (peak, confident) x 2 channels
    assert torch.all(f[0] == 0)
    assert f[1, 1] == pytest.approx(1.0) and f[1, 0] == 0
    assert f[1, 3] == pytest.approx(math.log1p(27.0) / 3.0)
    assert f[2, 0] == pytest.approx(1.0 / 27.0)   # averaged over its block: not a lesion


def test_a_peaks_network_round_trips_through_its_state_dict():
    from net import TypicalityNet

    for peaks in (0, 1):
        net = TypicalityNet(peaks=peaks).eval()
        again = TypicalityNet.from_state_dict(net.state_dict()).eval()
        assert again.config == net.config
        x = torch.rand(1, 1, 64, 128, 128)
        with torch.no_grad():
            pooled, _seg, _probs = again.features(x)
            assert pooled.shape[1] == TypicalityNet.head_inputs(16, 32, 10, peaks)
            assert torch.equal(again(x)[0], net(x)[0])


def test_pos_weights_name_channels_and_refuse_unknown_ones():
    import data
    from train import pos_weights, seg_loss

    assert pos_weights("") is None
    w = pos_weights("cavity=10,nodule=20")
    assert w is not None and w.shape == (1, len(data.CHANNELS), 1, 1, 1)
    assert w[0, data.CHANNELS.index("cavity"), 0, 0, 0] == 10
    assert w[0, data.CHANNELS.index("nodule"), 0, 0, 0] == 20
    assert w.flatten().tolist().count(1.0) == len(data.CHANNELS) - 2
    with pytest.raises(SystemExit, match="cavitation"):
        pos_weights("cavitation=10")
    # the weight raises the loss of a missed positive in that channel only
    target = torch.zeros(1, len(data.CHANNELS), 2, 4, 4)
    target[0, data.CHANNELS.index("cavity"), 0, 0, 0] = 1.0
    logits = torch.full_like(target, -4.0)
    assert seg_loss(logits, target, w) > seg_loss(logits, target, None)


def test_head_refit_never_keeps_a_head_worse_on_validation_than_the_networks_own():
    from fit_head import refit
    from net import TypicalityNet

    torch.manual_seed(0)
    net = TypicalityNet(peaks=1)
    n_in = TypicalityNet.head_inputs(16, 32, 10, 1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.randn(n, n_in)
        f[:, :4] *= 3.0                         # the class is the largest of the first four
        return f, f[:, :4].argmax(1)

    ftr, ytr = split(4000)
    fva, yva = split(200)
    mu, sd = ftr.mean(0), ftr.std(0)

    def val_acc(state: dict) -> float:
        head = TypicalityNet(peaks=1).cls
        head.load_state_dict(state)
        head.eval()
        with torch.no_grad():
            return float((head(fva).argmax(1) == yva).float().mean())

    own = val_acc(net.cls.state_dict())
    learnt = refit(net, ftr, ytr, fva, yva, mu, sd, steps=200, every=10)
    assert own < 0.4 < 0.75 < val_acc(learnt)      # random head replaced by a fitted one

    # a network whose own head is already the better one keeps it
    net.cls.load_state_dict(learnt)
    kept = refit(net, ftr, ytr, fva, yva, mu, sd, steps=3, every=1)
    assert val_acc(kept) >= val_acc(learnt)
    assert all(torch.equal(a, b) for a, b in zip(net.cls.state_dict().values(), learnt.values()))  # untouched
