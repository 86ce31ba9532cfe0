"""The camera of the synthetic fundus generator: how a domain acquires the scene drawn by
:mod:`monai_tta.data.fundus_scene` (illumination, haze, contrast, blur, resolution, colour response, tone curve,
noise, compression).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import fft as sp_fft
from scipy import ndimage

from monai_tta.data.fundus_domains import FundusDomain
from monai_tta.data.fundus_scene import REF_SIZE

__all__ = ["acquire"]


def _jpeg_like(img: np.ndarray, step: float) -> np.ndarray:
    """JPEG-like artefacts: 8x8 block DCT of YCbCr, coarser quantisation at high frequencies and for chroma."""
    h, w, _ = img.shape
    ph, pw = -h % 8, -w % 8
    rgb_to_ycc = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = np.pad(img @ rgb_to_ycc.T, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hb, wb = ycc.shape[0] // 8, ycc.shape[1] // 8
    blocks = ycc.reshape(hb, 8, wb, 8, 3).transpose(0, 2, 4, 1, 3)  # (hb, wb, c, 8, 8)
    coeffs = sp_fft.dctn(blocks, axes=(-2, -1), norm="ortho")
    freq = np.add.outer(np.arange(8), np.arange(8))
    q = step * (1.0 + 0.5 * freq)[None, None, None] * np.array([1.0, 2.0, 2.0])[None, None, :, None, None]
    blocks = sp_fft.idctn(np.round(coeffs / q) * q, axes=(-2, -1), norm="ortho")
    ycc = blocks.transpose(0, 3, 1, 4, 2).reshape(hb * 8, wb * 8, 3)[:h, :w]
    return ycc @ np.linalg.inv(rgb_to_ycc).T


def _resample(img: np.ndarray, factor: float) -> np.ndarray:
    """Box-downsample by ``factor`` then bilinear-upsample back to the original size (per channel)."""
    h, w, _ = img.shape
    small = (max(int(round(w / factor)), 1), max(int(round(h / factor)), 1))
    out = np.empty_like(img, dtype=np.float32)
    for c in range(img.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))
        out[..., c] = np.asarray(channel.resize(small, Image.BOX).resize((w, h), Image.BILINEAR))
    return out


def acquire(
    rng: np.random.Generator, spec: FundusDomain, scene: np.ndarray, fov: np.ndarray, fov_c: np.ndarray, fov_r: float
) -> np.ndarray:
    """Simulate the acquisition of ``scene`` by the domain's camera.

    Args:
        rng: the case's stream, after :func:`~monai_tta.data.fundus_scene.render_scene` drew from it.
        spec: the domain (its acquisition fields).
        scene: linear RGB in [0, 1], ``(H, W, 3)``.
        fov: the field of view's opacity ``(H, W)``.
        fov_c: the field of view's centre (pixels).
        fov_r: its radius (pixels).

    Returns:
        uint8 RGB ``(H, W, 3)``.
    """
    h, w, _ = scene.shape
    scale = min(h, w) / REF_SIZE
    j = spec.jitter

    def jit(value: float) -> float:
        return float(value * math.exp(rng.normal(0.0, j)))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ry, rx = (yy - fov_c[0]) / fov_r, (xx - fov_c[1]) / fov_r
    direction = rng.uniform(0.0, 2.0 * math.pi)
    gradient = spec.uneven * rng.uniform(0.5, 1.0) * (math.cos(direction) * rx + math.sin(direction) * ry)
    illumination = jit(spec.gain) * (1.0 - spec.vignetting * np.clip(rx**2 + ry**2, 0.0, 1.0)) * (1.0 + gradient)
    img = scene * np.clip(illumination, 0.0, None)[..., None]

    if spec.haze > 0:
        haze = min(jit(spec.haze), 0.95)
        img = (1.0 - haze) * img + haze * np.asarray(spec.haze_color)[None, None, :] * fov[..., None]
    if spec.contrast != 1.0:
        inside = fov > 0.5
        mean = img[inside].mean(axis=0) if inside.any() else img.reshape(-1, 3).mean(axis=0)
        img = mean + min(jit(spec.contrast), 1.0) * (img - mean)
    if spec.blur_sigma > 0:
        sigma = jit(spec.blur_sigma) * scale
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="nearest")
    if spec.downsample > 1:
        img = _resample(img, spec.downsample)

    mixing = (1.0 - spec.crosstalk) * np.eye(3) + spec.crosstalk / 3.0
    white_balance = np.asarray(spec.white_balance) * np.exp(rng.normal(0.0, j / 2.0, 3))
    img = (img @ mixing.T) * white_balance[None, None, :]
    img = np.clip(img, 0.0, None) ** jit(spec.gamma)

    if spec.noise_std > 0:
        img = img + rng.normal(0.0, spec.noise_std, img.shape)
    if spec.jpeg_step > 0:
        img = _jpeg_like(img, spec.jpeg_step)
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
