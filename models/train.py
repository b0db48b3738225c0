"""Model definitions and training (torch, CPU, build time only).

All models take float32 reflectance (uint16 * 1e-4), shape (N, 6, 64, 64), with no clamp or
normalisation in the graph: the sensor saturates at reflectance 1.14-1.33, so calibrated input
stays below ~1.5 and the INT8 input scale (MinMax over training tiles) covers it. (A Clip op on
the full-resolution input cost as much time as the convolutions.)

cloud_screen  4x4 patch embedding -> 16x16 cells -> 1x1 / 3x3 / 1x1 convs -> per-cell cloud
              probability (sigmoid) -> mean over cells = tile cloud fraction. Trained on the cloud
              fraction of every 4x4 cell (BCE with soft targets), so the tile fraction is the
              average of calibrated cell fractions.
ship_detect,  s x s space-to-depth conv -> 3x3 convs -> 1x1 -> sigmoid heatmap of object
fire_detect   centres (CenterNet-style Gaussian targets, sigma ~ 1 cell), (N, 64/s, 64/s).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

SCALE = 1e-4


def set_determinism(seed: int, threads: int = 1) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def conv_bn(cin, cout, k, stride=1, pad=0):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CloudNet(nn.Module):
    def __init__(self, c: int = 16, embed: str = "conv", ctx: int = 2):
        super().__init__()
        first = conv_bn(6, c, 4, stride=4) if embed == "conv" else nn.Sequential(nn.AvgPool2d(4), conv_bn(6, c, 1))
        layers = [first, conv_bn(c, c, 1)]
        layers += [conv_bn(c, c, 3, pad=1) for _ in range(ctx)]
        if ctx == 0:
            layers.append(conv_bn(c, c, 1))
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1)

    def cell_logits(self, x):  # (N, 1, 16, 16)
        return self.head(self.body(x))

    def forward(self, x):  # -> (N,) tile cloud fraction
        return torch.sigmoid(self.cell_logits(x)).mean(dim=(1, 2, 3))


class HeatNet(nn.Module):
    def __init__(self, stride: int = 2, c: int = 16, depth: int = 2, dilations=(1, 2)):
        super().__init__()
        layers = [conv_bn(6, c, stride, stride=stride)]
        for i in range(depth):
            d = dilations[i % len(dilations)]
            layers.append(nn.Sequential(nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(c), nn.ReLU()))
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1)
        self.stride = stride

    def logits(self, x):  # (N, 1, 64/s, 64/s)
        return self.head(self.body(x))

    def forward(self, x):  # -> (N, 64/s, 64/s) probability
        return torch.sigmoid(self.logits(x)).squeeze(1)


# ------------------------------------------------------------------------------ augmentation
def _d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def augment_radiometry(x: torch.Tensor, rng: np.random.Generator, p_clip: float = 0.25) -> torch.Tensor:
    """Radiometric augmentation, per tile: brightness (x0.9-1.1) and per-band gain (x0.95-1.05)
    jitter (illumination, calibration); and, for ``p_clip`` of the tiles, visible bands clipped at
    a random level 0.3-0.6, as older sensors (Landsat TM / ETM+) saturate over bright cloud: a
    saturated cloud core then looks 'redder than white', which must still read as cloud."""
    n = x.shape[0]
    g = rng.uniform(0.9, 1.1, size=(n, 1, 1, 1)) * rng.uniform(0.95, 1.05, size=(n, 6, 1, 1))
    x = x * torch.from_numpy(g.astype(np.float32))
    if p_clip > 0:
        lim = np.full((n, 6, 1, 1), 100.0, np.float32)
        sel = rng.random(n) < p_clip
        lvl = rng.uniform(0.3, 0.6, size=(n, 3)).astype(np.float32)
        some = rng.random((n, 3)) < 0.7
        lim[:, :3, 0, 0] = np.where(sel[:, None] & some, lvl, 100.0)
        x = torch.minimum(x, torch.from_numpy(lim))
    return x


def _as_float(tiles: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tiles.astype(np.float32) * np.float32(SCALE))


# ------------------------------------------------------------------------------------- cloud
def train_cloud(data: dict, epochs: int = 12, seed: int = 1, c: int = 16, lr: float = 3e-3, batch: int = 64,
                embed: str = "conv", ctx: int = 2, thin_weight: float = 1.0, log=print) -> CloudNet:
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    model = CloudNet(c, embed, ctx)
    tiles, cells = data["tiles"], data["cells"]
    n = len(tiles)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(n)
        tot = 0.0
        for i in range(0, n, batch):
            idx = np.sort(perm[i: i + batch])
            x = _as_float(tiles[idx])
            y = torch.from_numpy(cells[idx].astype(np.float32)[:, None] / CELL_PIX)
            thin = torch.from_numpy(data["thin"][idx].astype(np.float32)[:, None] / CELL_PIX) if "thin" in data else torch.zeros_like(y)
            w = 1.0 - (1.0 - thin_weight) * thin
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, y, w = _d4(x, k, flip), _d4(y, k, flip), _d4(w, k, flip)
            x = augment_radiometry(x, rng)
            logits = model.cell_logits(x)
            frac = torch.sigmoid(logits).mean(dim=(1, 2, 3))
            loss = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).mean() \
                + 2.0 * (frac - y.mean(dim=(1, 2, 3))).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        log(f"    cloud epoch {ep + 1}/{epochs} loss {tot / n:.4f} ({time.time() - t0:.0f} s)")
    return model.eval()


CELL_PIX = 16.0  # pixels per 4x4 cell


# ---------------------------------------------------------------------------------- heatmaps
def heat_targets(objects: np.ndarray, n: int, stride: int, sigma_px: float, sigma_per_length: float = 0.25,
                 ignore_px: float = 3.0):
    """Gaussian centre targets and loss weights per tile, from [tile, row, col, target, length] rows.

    sigma = max(sigma_px, sigma_per_length * length): a long ship or fire front gets one broad
    peak at its centre rather than several along it. Objects the detector need not find
    (target 0) get weight 0 around them, not a negative."""
    cells = 64 // stride
    cc = (np.arange(cells, dtype=np.float32) + 0.5) * stride
    tgt = np.zeros((n, cells, cells), np.float32)
    wgt = np.ones((n, cells, cells), np.float32)
    for t, r, c, must, length in objects:
        t = int(t)
        d2 = (cc[:, None] - r) ** 2 + (cc[None, :] - c) ** 2
        sigma = max(sigma_px, sigma_per_length * length)
        if must > 0:
            np.maximum(tgt[t], np.exp(-d2 / (2 * sigma**2)), out=tgt[t])
        else:
            wgt[t][d2 <= (max(ignore_px, 0.5 * length) + stride) ** 2] = 0.0
    return tgt, wgt


def train_heat(data: dict, stride: int, epochs: int = 15, seed: int = 1, c: int = 16, depth: int = 2,
               sigma_px: float = 1.5, lr: float = 3e-3, batch: int = 64, pos_weight: float = 20.0,
               dilations=(1, 2), sigma_per_length: float = 0.25, cloudy_boost: float = 1.0, name: str = "heat",
               log=print) -> HeatNet:
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    model = HeatNet(stride, c, depth, dilations)
    tiles = data["tiles"]
    n = len(tiles)
    tgt, wgt = heat_targets(data["objects"], n, stride, sigma_px, sigma_per_length)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    # tiles with some cloud hold the look-alikes (small bright cloudlets): sample them more often
    sw = np.where(data["cloud"] > 0, cloudy_boost, 1.0) if "cloud" in data else np.ones(n)
    sw = sw / sw.sum()
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(n) if cloudy_boost == 1.0 else rng.choice(n, size=n, p=sw)
        tot = 0.0
        for i in range(0, n, batch):
            idx = np.sort(perm[i: i + batch])
            x = _as_float(tiles[idx])
            y, w = torch.from_numpy(tgt[idx][:, None]), torch.from_numpy(wgt[idx][:, None])
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, y, w = _d4(x, k, flip), _d4(y, k, flip), _d4(w, k, flip)
            x = augment_radiometry(x, rng, p_clip=0.0)
            logits = model.logits(x)
            # soft-target BCE, positives (target mass) up-weighted: objects are rare cells
            w = w * (1.0 + pos_weight * y)
            loss = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        log(f"    {name} epoch {ep + 1}/{epochs} loss {tot / n:.4f} ({time.time() - t0:.0f} s)")
    return model.eval()


def predict(model: nn.Module, tiles: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            out.append(model(_as_float(tiles[i: i + batch])).numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
