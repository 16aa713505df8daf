"""The reference COVID-19 typicality network (PyTorch, training only; the node runs ONNX).

A light 3D encoder-decoder: a 2x2x2 patchify stem, three resolution levels with additive
skips, a two-channel segmentation head (lung, lesion) and a classification head that
sees pooled deep features together with hand-crafted features measured on the predicted
maps (involvement, peripheral and bilateral distribution, lower-zone and dependent
predominance, lesion density).  Those features are computed inside the graph, so the
exported ONNX file is the whole model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_FEATURES = 10  # distribution features of the lesion map
PEAK_FEATURES = 2  # per segmentation channel after the lung, with ``peaks``: local peak, confident volume
# Extra segmentation channels (after lung, lesion) whose log-volumes feed the classifier:
# ggo, crazy-paving, consolidation, nodule, cavity, effusion, atelectasis, septal.


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class TypicalityNet(nn.Module):
    """``c0`` > 0 adds a 3x3x3 block at the input's full resolution before the 2x2x2 stem,
    so that structures of one or two voxels (centrilobular nodules, thin cavity walls) are
    seen before the stem averages them away; ``c1``-``c3`` are the widths of the levels.

    ``peaks`` adds, for each segmentation channel after the lung, its local peak and its
    confident volume (:meth:`peak_features`) to the classifier's input.  Why: 2.0.0 read only
    each channel's summed probability, in which one 2 cm cavity (a few dozen half-resolution
    voxels) is lost against the background's small probabilities over 130,000 voxels; its
    cavity and nodule channels had learnt nothing (Dice 0.00 on the validation seeds), and
    cavitation and tree-in-bud were its worst variants (training/README.md)."""

    def __init__(self, n_classes: int = 4, n_seg: int = 10, c1: int = 8, c2: int = 16, c3: int = 32,
                 c0: int = 0, peaks: int = 0):
        super().__init__()
        self.config = {"n_classes": n_classes, "n_seg": n_seg, "c1": c1, "c2": c2, "c3": c3, "c0": c0,
                       "peaks": peaks}
        self.full = _block(1, c0) if c0 else nn.Identity()
        self.stem = nn.Sequential(nn.Conv3d(c0 or 1, c1, 2, stride=2, bias=False), nn.BatchNorm3d(c1),
                                  nn.ReLU(inplace=True))
        self.enc1 = _block(c1, c1)
        self.down2 = nn.Sequential(nn.Conv3d(c1, c2, 2, stride=2, bias=False), nn.BatchNorm3d(c2), nn.ReLU(inplace=True))
        self.enc2 = _block(c2, c2)
        self.down3 = nn.Sequential(nn.Conv3d(c2, c3, 2, stride=2, bias=False), nn.BatchNorm3d(c3), nn.ReLU(inplace=True))
        self.enc3 = nn.Sequential(_block(c3, c3), _block(c3, c3))
        self.lat2 = nn.Conv3d(c3, c2, 1)
        self.dec2 = _block(c2, c2)
        self.lat1 = nn.Conv3d(c2, c1, 1)
        self.dec1 = _block(c1, c1)
        self.n_seg = n_seg
        self.seg = nn.Conv3d(c1, n_seg, 1)  # lung, lesion, lesion types: logits at half resolution
        self.peaks = bool(peaks)
        self.cls = nn.Sequential(
            nn.Linear(self.head_inputs(c2, c3, n_seg, peaks), 48), nn.GELU(), nn.Dropout(0.1), nn.Linear(48, n_classes))

    @staticmethod
    def head_inputs(c2: int, c3: int, n_seg: int, peaks: int) -> int:
        """Length of the classifier's input vector (:meth:`features`)."""
        return 2 * c3 + c2 + N_FEATURES + (n_seg - 2) + (PEAK_FEATURES * (n_seg - 1) if peaks else 0)

    @classmethod
    def peaks_of(cls, head_width: int, c2: int, c3: int, n_seg: int) -> int:
        """``peaks`` of trained weights, read from the width of the classifier's first layer
        (a state dict or an ONNX graph holds no config)."""
        return int(head_width != cls.head_inputs(c2, c3, n_seg, 0))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> TypicalityNet:
        """The network whose shapes match these weights (widths and ``c0`` read from the
        tensors), with the weights loaded: checkpoints stay plain state dicts."""
        n_seg, c2, c3 = (int(state[k].shape[0]) for k in ("seg.weight", "down2.0.weight", "down3.0.weight"))
        net = cls(n_classes=int(state["cls.3.weight"].shape[0]), n_seg=n_seg,
                  c1=int(state["stem.0.weight"].shape[0]), c2=c2, c3=c3,
                  c0=int(state["full.0.weight"].shape[0]) if "full.0.weight" in state else 0,
                  peaks=cls.peaks_of(int(state["cls.0.weight"].shape[1]), c2, c3, n_seg))
        net.load_state_dict(state)
        return net

    @staticmethod
    def peak_features(probs: torch.Tensor) -> torch.Tensor:
        """(N, 2 * C) for probability maps (N, C, d, h, w): the highest mean over any 3x3x3
        block (a small lesion's presence, robust to one stray voxel) and the log volume
        above 0.5 (how much is confidently there)."""
        peak = F.avg_pool3d(probs, 3, stride=1, padding=1, count_include_pad=False).amax(dim=(2, 3, 4))
        confident = torch.log1p(torch.relu(probs - 0.5).sum(dim=(2, 3, 4)) * 2.0) / 3.0
        return torch.cat([peak, confident], dim=1)

    @staticmethod
    def map_features(x: torch.Tensor, lung: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
        """Distribution features of the lesion map (inputs at half resolution, N,1,D,H,W)."""
        eps = 1e-3
        lung_all = torch.maximum(lung, lesion)
        lung_vol = lung_all.sum(dim=(1, 2, 3, 4))
        les_vol = lesion.sum(dim=(1, 2, 3, 4))
        # Peripheral band: lung minus lung eroded by ~15 mm in-plane (min-pool = -maxpool(-x)).
        eroded = -F.max_pool3d(-lung_all, kernel_size=(3, 7, 7), stride=1, padding=(1, 3, 3))
        band = (lung_all - eroded).clamp(min=0.0)
        peripheral = (lesion * band).sum(dim=(1, 2, 3, 4)) / (les_vol + eps)
        w = lesion.shape[-1]
        right = lesion[..., : w // 2].sum(dim=(1, 2, 3, 4))  # LPS: low x = patient right
        left = lesion[..., w // 2:].sum(dim=(1, 2, 3, 4))
        bilateral = torch.minimum(left, right) / (torch.maximum(left, right) + eps)
        d, h = lesion.shape[2], lesion.shape[3]
        zc = torch.linspace(-1.0, 1.0, d, device=x.device).view(1, 1, d, 1, 1)  # inferior -> superior
        yc = torch.linspace(-1.0, 1.0, h, device=x.device).view(1, 1, 1, h, 1)  # anterior -> posterior
        lung_z = (lung_all * zc).sum(dim=(1, 2, 3, 4)) / (lung_vol + eps)
        les_z = (lesion * zc).sum(dim=(1, 2, 3, 4)) / (les_vol + eps)
        lung_y = (lung_all * yc).sum(dim=(1, 2, 3, 4)) / (lung_vol + eps)
        les_y = (lesion * yc).sum(dim=(1, 2, 3, 4)) / (les_vol + eps)
        xs = F.avg_pool3d(x, 2)
        les_density = (lesion * xs).sum(dim=(1, 2, 3, 4)) / (les_vol + eps)
        lung_density = (lung_all * xs).sum(dim=(1, 2, 3, 4)) / (lung_vol + eps)
        involvement = les_vol / (lung_vol + eps)
        present = torch.sigmoid((les_vol - 20.0) / 5.0)
        feats = [
            torch.log1p(les_vol) / 5.0, involvement * 5.0, peripheral * present, bilateral * present,
            (les_z - lung_z) * 3.0 * present, (les_y - lung_y) * 3.0 * present,
            (les_density - lung_density) * 5.0 * present, lung_density * 2.0, present,
            torch.log1p(right) / 5.0 - torch.log1p(left) / 5.0,
        ]
        return torch.stack(feats, dim=1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(classifier input vector, seg logits at half resolution, seg probabilities)."""
        e1 = self.enc1(self.stem(self.full(x)))
        e2 = self.enc2(self.down2(e1))
        e3 = self.enc3(self.down3(e2))
        d2 = self.dec2(e2 + F.interpolate(self.lat2(e3), scale_factor=2.0, mode="nearest"))
        d1 = self.dec1(e1 + F.interpolate(self.lat1(d2), scale_factor=2.0, mode="nearest"))
        seg = self.seg(d1)
        probs = torch.sigmoid(seg)
        lung, lesion = probs[:, 0:1], probs[:, 1:2]
        feats = self.map_features(x, lung.detach(), lesion.detach())
        typed = torch.log1p(probs[:, 2:].detach().sum(dim=(2, 3, 4))) / 5.0
        parts = [F.adaptive_avg_pool3d(e3, 1).flatten(1), F.adaptive_max_pool3d(e3, 1).flatten(1),
                 F.adaptive_avg_pool3d(d2, 1).flatten(1), feats, typed]
        if self.peaks:
            parts.append(self.peak_features(probs[:, 1:].detach()))
        pooled = torch.cat(parts, dim=1)
        return pooled, seg, probs

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`forward`'s outputs and, last, the pooled features the classifier read."""
        pooled, seg, probs = self.features(x)
        logits = self.cls(pooled)
        full = F.interpolate(probs[:, :2], scale_factor=2.0, mode="trilinear", align_corners=False)
        return logits, seg, full[:, 1:2], full[:, 0:1], pooled

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class logits, seg logits at half resolution, lesion prob, lung prob at full resolution)."""
        logits, seg, lesion, lung, _ = self.forward_with_features(x)
        return logits, seg, lesion, lung


class Exported(nn.Module):
    """What goes into ONNX: probabilities, lesion map, lung map and, when the training set's
    feature statistics are given, the domain distance (issue 12's domain gate).

    The distance is the Mahalanobis distance of the pooled features the classifier reads
    from their training mean, ``|| (f - mean) @ whiten ||`` with ``whiten`` the Cholesky
    factor of the (shrunk) inverse covariance, so the node compares one number with the
    manifest's ``[domain] feature_distance.max`` and the reference travels, sealed, with
    the weights.
    """

    def __init__(self, net: TypicalityNet, mean: torch.Tensor | None = None, whiten: torch.Tensor | None = None):
        super().__init__()
        self.net = net
        self.with_distance = mean is not None and whiten is not None
        if self.with_distance:
            self.register_buffer("mean", mean.float().view(1, -1))
            self.register_buffer("whiten", whiten.float())

    def forward(self, ct: torch.Tensor):
        logits, _seg, lesion, lung, pooled = self.net.forward_with_features(ct)
        out = (torch.softmax(logits, dim=1), lesion, lung)
        if self.with_distance:
            out = out + (feature_distance(pooled, self.mean, self.whiten),)
        return out


def feature_distance(pooled: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """(N, 1) Mahalanobis distance of pooled features from the training mean, in the graph
    (:class:`Exported`, and export_involvement.py's package, which shares the backbone)."""
    z = (pooled - mean.view(1, -1)) @ whiten
    return torch.sqrt((z * z).sum(dim=1, keepdim=True))


def domain_reference(train: torch.Tensor, shrink: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, whiten) of training features: covariance shrunk towards its diagonal so that
    near-constant features do not make the distance explode; whiten = chol(inv(cov))."""
    f = train.double()
    mean = f.mean(0)
    cov = torch.cov(f.T)
    diag = torch.diag(torch.diag(cov).clamp(min=1e-6))
    cov = (1.0 - shrink) * cov + shrink * diag
    inv = torch.linalg.inv(cov)
    inv = (inv + inv.T) / 2.0
    return mean.float(), torch.linalg.cholesky(inv).float()
