"""Frames as tensors: decode once per night into a uint8 cache, augment batches.

The night's JPEGs are decoded once (batched ``torchvision.io.decode_jpeg``; on CUDA with
nvjpeg) into a ``(N, 3, S, S)`` uint8 tensor at the model's resolution, short side resized
to ``S`` and centre-cropped. Training then only gathers rows of that tensor, so decoding
never starves the GPU. Augmentation (random resized crop, horizontal flip) runs on whole
batches on the device with one ``grid_sample``. A sealed memory's frames are read through its
vault (:func:`core.vault.vault_of`) and decrypted in memory; a plain memory's are read by
torchvision as they are.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from tqdm import tqdm

from core.progress import bar_off
from core.sealed import SealedFileError
from core.vault import Vault, vault_of
from models.vision.jepa import PIXEL_MEAN, PIXEL_STD

log = logging.getLogger(__name__)


@dataclass
class FrameCache:
    """Decoded frames; ``index[i]`` is the position in the caller's list of ``images[i]``."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    index: list[int]
    failed: list[dict] = field(default_factory=list)  # {"path", "reason"}


def square_frame(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., 3, H, W)`` uint8 -> short side resized to ``size``, centre-cropped square."""
    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])


def read_frame(path: Path, vaults: dict[Path, Vault]) -> torch.Tensor:
    """The bytes of the frame file at ``path`` as a uint8 tensor, decrypted when sealed.

    ``vaults`` caches the vault of each folder read from (a day's frames share a few).
    """
    keyring = vaults.get(path.parent)
    if keyring is None:
        keyring = vaults[path.parent] = vault_of(path)
    if not keyring.sealing:
        return read_file(str(path))
    with keyring.open(path) as fh:
        return torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)


def decode_frames(paths: list[Path], size: int, device: str = "cpu", chunk: int = 256,
                  progress: bool = True) -> FrameCache:
    """Decode JPEG frames into one uint8 tensor at ``size x size``.

    Args:
        paths: JPEG files.
        size: output side in pixels.
        device: ``"cuda"`` decodes with nvjpeg on the GPU; the cache itself is returned on
            the CPU (pinned when CUDA is used) so the caller decides where it lives.
        chunk: files decoded per batched call.
    Returns:
        a :class:`FrameCache`; unreadable files are listed in ``failed`` with their reason.
    """
    out: list[torch.Tensor] = []
    index: list[int] = []
    failed: list[dict] = []
    decode_device = "cuda" if device.startswith("cuda") else "cpu"
    vaults: dict[Path, Vault] = {}
    for start in tqdm(range(0, len(paths), chunk), desc="decode frames", unit="chunk",
                      disable=bar_off(progress, len(paths) <= chunk), leave=False):
        batch = list(range(start, min(start + chunk, len(paths))))
        data: dict[int, torch.Tensor] = {}
        for i in batch:
            try:
                data[i] = read_frame(Path(paths[i]), vaults)
            except (OSError, RuntimeError, SealedFileError) as exc:
                failed.append({"path": str(paths[i]), "reason": f"cannot read: {exc}"})
        keys = list(data)
        try:
            images = decode_jpeg([data[i] for i in keys], mode=ImageReadMode.RGB, device=decode_device)
        except RuntimeError:
            # One bad file fails the whole batched call; decode this chunk one by one to
            # find it, so the other frames of the day are still used.
            images = []
            for i in list(keys):
                try:
                    images.append(decode_jpeg(data[i], mode=ImageReadMode.RGB, device=decode_device))
                except RuntimeError as exc:
                    failed.append({"path": str(paths[i]), "reason": f"not a readable JPEG: {exc}"})
                    keys.remove(i)
        for i, image in zip(keys, images):
            out.append(square_frame(image, size).cpu())
            index.append(i)
    for item in failed:
        log.warning("frame skipped: %s: %s", item["path"], item["reason"])
    stacked = torch.stack(out) if out else torch.empty(0, 3, size, size, dtype=torch.uint8)
    if decode_device == "cuda" and len(out):
        stacked = stacked.pin_memory()
    return FrameCache(stacked, index, failed)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 -> float32 standardised pixels."""
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def random_resized_crop(images: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Per-image random resized crop (and horizontal flip) of a batch, at the same size.

    Args:
        images: ``(B, 3, S, S)`` float images on any device.
        scale: (low, high) share of the image area a crop covers.
        generator: a CPU generator (the draws are tiny; the warp runs on ``images.device``).
        ratio: (low, high) crop width/height.
        flip: mirror half the crops.
    Returns:
        ``(B, 3, S, S)`` crops, bilinear.
    """
    B = images.shape[0]
    area = torch.empty(B).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(B).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)  # crop size as a share of the side
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(B, generator=generator) * 2 - 1) * (1 - w)  # centre in [-1, 1] coords
    cy = (torch.rand(B, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(B, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(B)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(images.device, images.dtype, non_blocking=True)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class BatchGatherer:
    """Rows of a uint8 frame cache as device batches.

    On CUDA the whole cache moves to the GPU when it is at most ``gpu_max_bytes``
    (a day of frames at 224 px is a few GB); otherwise rows are gathered into two pinned
    buffers in turn and copied without blocking, so the copy overlaps the previous step.
    """

    def __init__(self, cache: torch.Tensor, device: str, batch_size: int, gpu_max_bytes: float):
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        nbytes = cache.numel() * cache.element_size()
        self.resident = not on_cuda or nbytes <= gpu_max_bytes
        if self.resident:
            self.cache = cache.to(self.device, non_blocking=True) if on_cuda else cache
            return
        self.cache = cache if cache.is_pinned() else cache.pin_memory()
        self.buffers = [torch.empty((batch_size, *cache.shape[1:]), dtype=cache.dtype).pin_memory()
                        for _ in range(2)]
        self.events = [None, None]
        self.turn = 0

    def __len__(self) -> int:
        return self.cache.shape[0]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """``(B,)`` int64 row numbers (CPU) -> ``(B, 3, S, S)`` uint8 on the device."""
        if self.resident:
            return self.cache[rows.to(self.cache.device, non_blocking=True)]
        k = self.turn
        self.turn ^= 1
        if self.events[k] is not None:
            self.events[k].synchronize()  # the copy that last used this buffer is done
        buffer = self.buffers[k][: rows.numel()]
        torch.index_select(self.cache, 0, rows, out=buffer)
        batch = buffer.to(self.device, non_blocking=True)
        self.events[k] = torch.cuda.Event()
        self.events[k].record()
        return batch
