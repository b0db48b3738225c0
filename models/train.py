"""Model definitions and training (torch, CPU, build time only).

In torch, models take float32 reflectance (uint16 * 1e-4), shape (N, 6, 64, 64), with no clamp or
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

import contextlib
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


def conv_bn(cin, cout, k, stride=1, pad=0, dilation=1, act: str = "relu"):
    """conv -> batch norm -> ReLU; act "relu6" bounds the activation at 6 (a fixed, outlier-free
    INT8 range: MobileNet's trick for quantization)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6() if act == "relu6" else nn.ReLU())


class CloudNet(nn.Module):
    def __init__(self, c: int = 16, embed: str = "conv", ctx: int = 2, cell: int = 4):
        """``cell``: pixels per side of the cells the stem predicts (4: a 16x16 map; 8: 8x8). The
        8-pixel stem runs 2x faster in onnxruntime's INT8 kernels (models/README.md, "Tried for issue #16")."""
        super().__init__()
        assert cell in (4, 8), "the training targets come in 4x4-pixel cells, pooled to 8x8"
        first = conv_bn(6, c, cell, stride=cell) if embed == "conv" else nn.Sequential(nn.AvgPool2d(cell), conv_bn(6, c, 1))
        layers = [first, conv_bn(c, c, 1)]
        layers += [conv_bn(c, c, 3, pad=1) for _ in range(ctx)]
        if ctx == 0:
            layers.append(conv_bn(c, c, 1))
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1)

    def cell_logits(self, x):  # (N, 1, 64 / cell, 64 / cell)
        return self.head(self.body(x))

    def forward(self, x):  # -> (N,) tile cloud fraction
        return torch.sigmoid(self.cell_logits(x)).mean(dim=(1, 2, 3))


class HeatNet(nn.Module):
    def __init__(self, stride: int = 2, c: int = 16, depth: int = 2, dilations=(1, 2), stem: str = "patch",
                 act: str = "relu", stem_c: int | None = None):
        """``stem_c``: channels of the "s2" stem's first (2x2 stride-2) convolution; default c // 2."""
        super().__init__()
        if stem == "patch":  # s x s space-to-depth conv: cheapest, but a 3 px ship is a fraction of one cell
            layers = [conv_bn(6, c, stride, stride=stride, act=act)]
        else:  # "s2": 2x2 stride-2 conv, then a 3x3 stride-2 conv, keeps 2 px detail for small objects
            assert stride == 4, "the s2 stem reaches stride 4"
            sc = stem_c or c // 2
            layers = [conv_bn(6, sc, 2, stride=2, act=act), conv_bn(sc, c, 3, stride=2, pad=1, act=act)]
        for i in range(depth):
            d = dilations[i % len(dilations)]
            layers.append(conv_bn(c, c, 3, pad=d, dilation=d, act=act))
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
    """uint16 channels-last tiles (N, 64, 64, 6) -> float32 reflectance (N, 6, 64, 64) for torch."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(tiles, -1, 1), dtype=np.float32) * np.float32(SCALE))


# ------------------------------------------------------------------------------------- cloud
def train_cloud(data: dict, epochs: int = 12, seed: int = 1, c: int = 16, lr: float = 3e-3, batch: int = 64,
                embed: str = "conv", ctx: int = 2, thin_weight: float = 1.0, real: dict | None = None,
                real_share: float = 0.0, cell: int = 4, log=print) -> CloudNet:
    """``real``: crops from real scenes (same keys as ``data``); they make up ``real_share`` of the
    tiles drawn in each epoch (sampled with replacement), the synthetic tiles the rest."""
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    model = CloudNet(c, embed, ctx, cell)
    pool = cell // 4  # the data's 4x4-pixel cell fractions, averaged to the model's cells
    n_syn = len(data["tiles"])
    if real is not None and real_share > 0:
        data = {k: np.concatenate([data[k], real[k]]) for k in ("tiles", "cells", "thin")}
    tiles, cells = data["tiles"], data["cells"]
    n = len(tiles)
    draw = None  # sampling probabilities when real crops are mixed in
    if n > n_syn:
        draw = np.concatenate([np.full(n_syn, (1 - real_share) / n_syn), np.full(n - n_syn, real_share / (n - n_syn))])
        n = n_syn  # an epoch is as long as the synthetic set
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(n) if draw is None else rng.choice(len(tiles), size=n, p=draw)
        tot = 0.0
        for i in range(0, n, batch):
            idx = np.sort(perm[i: i + batch])
            x = _as_float(tiles[idx])
            y = torch.from_numpy(cells[idx].astype(np.float32)[:, None] / CELL_PIX)
            thin = torch.from_numpy(data["thin"][idx].astype(np.float32)[:, None] / CELL_PIX) if "thin" in data else torch.zeros_like(y)
            if pool > 1:
                y, thin = nn.functional.avg_pool2d(y, pool), nn.functional.avg_pool2d(thin, pool)
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
               stem: str = "patch", act: str = "relu", qat_epochs: int = 0, hard_weight: float = 0.0,
               stem_c: int | None = None, log=print) -> HeatNet:
    """Train a heatmap detector; then, if ``qat_epochs``, fine-tune it quantization-aware
    (see ``ActivationFakeQuant``) so that the INT8 file decides like the FP32 one."""
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    model = HeatNet(stride, c, depth, dilations, stem, act, stem_c)
    tiles = data["tiles"]
    n = len(tiles)
    tgt, wgt = heat_targets(data["objects"], n, stride, sigma_px, sigma_per_length)
    if hard_weight > 0:  # cells full of look-alikes (cloud, shadow, coast) count more as negatives
        hard = data["hard"].astype(np.float32) / CELL_PIX
        wgt = wgt * (1.0 + hard_weight * hard * (tgt < 0.1))
    # tiles with some cloud hold the look-alikes (small bright cloudlets): sample them more often
    sw = np.where(data["cloud"] > 0, cloudy_boost, 1.0) if "cloud" in data else np.ones(n)
    sw = sw / sw.sum()

    def batches():
        perm = rng.permutation(n) if cloudy_boost == 1.0 else rng.choice(n, size=n, p=sw)
        for i in range(0, n, batch):
            idx = np.sort(perm[i: i + batch])
            x = _as_float(tiles[idx])
            y, w = torch.from_numpy(tgt[idx][:, None]), torch.from_numpy(wgt[idx][:, None])
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, y, w = _d4(x, k, flip), _d4(y, k, flip), _d4(w, k, flip)
            yield augment_radiometry(x, rng, p_clip=0.0), y, w

    def step(x, y, w, opt, sched, fq=None):
        # soft-target BCE, positives (target mass) up-weighted: objects are rare cells
        w = w * (1.0 + pos_weight * y)

        def bce():
            return (nn.functional.binary_cross_entropy_with_logits(model.logits(x), y, reduction="none") * w).sum() / w.sum()

        if fq is None:
            loss = bce()
        else:  # both the INT8-like and the float forward pass fit the targets, so the two files agree
            loss = 0.5 * bce()
            with fq.off():
                loss = loss + 0.5 * bce()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.detach()) * len(x)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(n / batch), pct_start=0.15)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        tot = sum(step(x, y, w, opt, sched) for x, y, w in batches())
        log(f"    {name} epoch {ep + 1}/{epochs} loss {tot / n:.4f} ({time.time() - t0:.0f} s)")
    if qat_epochs > 0:
        fq = ActivationFakeQuant(model)
        model.eval()
        with torch.no_grad():  # observe activation ranges (min/max, like the INT8 calibration)
            for j, (x, _, _) in enumerate(batches()):
                model.logits(fq.input(x))
                if j == 15:
                    break
        fq.freeze()
        qlr = lr / 10
        opt = torch.optim.AdamW(model.parameters(), lr=qlr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=qat_epochs * math.ceil(n / batch))
        for ep in range(qat_epochs):
            model.train()
            for m in model.modules():  # batch-norm statistics stay as trained (they fold into the convs)
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
            tot = sum(step(fq.input(x), y, w, opt, sched, fq) for x, y, w in batches())
            log(f"    {name} quantization-aware epoch {ep + 1}/{qat_epochs} loss {tot / n:.4f} ({time.time() - t0:.0f} s)")
        fq.remove()
    return model.eval()


class ActivationFakeQuant:
    """Quantization-aware fine-tuning, activations only: the input and every ReLU and head output
    are rounded to 8 bits over the range observed on training batches (uint8 from 0 after a ReLU,
    asymmetric for the input and the logits), as onnxruntime's static QDQ quantization will do,
    with straight-through gradients. Weights stay float (int8 per-channel weights lose far less).
    Each step fits both the quantized and the float forward pass (half the loss each), so the
    fine-tuned FP32 file still decides like the INT8 one.
    Forward hooks, removed before export, so the exported graph is the plain float model."""

    def __init__(self, model: nn.Module):
        self.lo: dict = {}
        self.hi: dict = {}
        self.frozen = False
        self.active = True
        self.handles = []
        targets = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))] + [model.head]
        for k, m in enumerate(targets):
            self.handles.append(m.register_forward_hook(lambda mod, inp, out, key=k: self._q(key, out)))

    @contextlib.contextmanager
    def off(self):
        """Activations in float (the input stays quantized: the FP32 file gets the same uint8 input)."""
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def _q(self, key, x):
        if not self.active and key != "input":
            return x
        if not self.frozen:
            self.lo[key] = min(self.lo.get(key, 0.0), float(x.min()))
            self.hi[key] = max(self.hi.get(key, 0.0), float(x.max()))
            return x
        lo, hi = self.lo[key], self.hi[key]
        scale = max(hi - lo, 1e-8) / 255.0
        zp = int(round(-lo / scale))
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)

    def input(self, x):
        return self._q("input", x)

    def freeze(self):
        self.frozen = True

    def remove(self):
        for h in self.handles:
            h.remove()


def predict(model: nn.Module, tiles: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            out.append(model(_as_float(tiles[i: i + batch])).numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
