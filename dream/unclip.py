"""Stable unCLIP as the dream decoder (``dream.backend: unclip``): OpenCLIP image embeddings
into images, with weights the user already has on disk.

diffusers' ``StableUnCLIPImg2ImgPipeline`` is loaded from ``dream.unclip.path`` (never
downloaded) and given the embeddings directly (``image_embeds=``), so its own image encoder
never sees a picture; the text side gets the embedding of the empty prompt (``prompt_embeds=``),
or zeros when the folder has no text encoder. The embeddings are the ``openclip`` stage's:
space ``openclip_frame`` (a frame) or ``openclip`` (a clip), version
``openclip@{model}-{weights hash}``, stored at unit length. Stable unCLIP was trained on raw
CLIP embeddings, which are longer, so each is scaled to ``dream.unclip.embed_norm`` first.
The pipeline's embedding width must be the OpenCLIP model's: stable-diffusion-2-1-unclip
takes ViT-H-14 (1024-d), stable-diffusion-2-1-unclip-small ViT-L-14 (768-d).

How the ``dream`` stage calls it::

    from dream.unclip import decode_embeddings, load_unclip
    from memory.store import load_vectors
    from models.openclip import weights_version

    version = weights_version(night.cfg.models.openclip)   # what the openclip stage stored
    rows, vectors = load_vectors(night.engine, night.paths, space="openclip_frame",
                                 model_version=version, date=night.day)   # (N, D) float32
    dreamer = load_unclip(night.cfg.dream.unclip, night.device, embed_dim=vectors.shape[1])
    images = decode_embeddings(dreamer, vectors[:8], generator=torch.Generator().manual_seed(seed))
    # images: (8, 3, dreamer.image_size, dreamer.image_size) uint8 on the CPU

A blend is two rows slerped (``stages.dream.slerp``) before decoding; the length is set
here, so any direction will do. Both functions raise :class:`core.errors.UsageError` for
a person's mistake (a missing folder, file or component, a width that does not match).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from core.config import UnclipConfig
from core.errors import UsageError
from core.progress import bar_off

if TYPE_CHECKING:
    from diffusers import StableUnCLIPImg2ImgPipeline

log = logging.getLogger(__name__)

PIPELINE_CLASS = "StableUnCLIPImg2ImgPipeline"
# Components decoding from embeddings cannot do without. diffusers reads the image encoder's
# dtype even when it is handed embeddings, so that one stays although it never runs.
REQUIRED = ("image_encoder", "image_normalizer", "image_noising_scheduler", "unet", "scheduler", "vae")
CLIP_TOKENS = 77  # CLIP's context length: the prompt width when the folder has no tokenizer
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class UnclipDreamer:
    """A loaded Stable unCLIP pipeline and what decoding needs besides it.

    Attributes:
        pipe: the diffusers ``StableUnCLIPImg2ImgPipeline``, on ``device``.
        cfg: the ``dream.unclip`` config it was loaded with (steps, guidance, noise level...).
        embed_dim: width of the image embeddings it decodes.
        image_size: side of its images, in pixels.
        prompt_embeds: ``(1, tokens, width)`` embedding of the empty prompt (zeros without a
            text encoder).
        name: ``unclip@{folder name}``, for the report.
    """

    pipe: StableUnCLIPImg2ImgPipeline
    cfg: UnclipConfig
    device: str
    embed_dim: int
    image_size: int
    prompt_embeds: torch.Tensor
    name: str

    @torch.no_grad()
    def decode(self, image_embeds: np.ndarray | torch.Tensor, generator: torch.Generator,
               steps: int | None = None, guidance: float | None = None, noise_level: int | None = None,
               progress: bool = False) -> torch.Tensor:
        """Draw one image per embedding, in one pass of the pipeline.

        Args:
            image_embeds: ``(N, embed_dim)`` OpenCLIP image embeddings, any length (each is
                scaled to ``cfg.embed_norm``).
            generator: a CPU ``torch.Generator``; the same seed gives the same images.
            steps, guidance, noise_level: override ``cfg.steps``, ``cfg.guidance``,
                ``cfg.noise_level``.
            progress: show the pipeline's own progress bar over the denoising steps.
        Returns:
            ``(N, 3, image_size, image_size)`` uint8 images on the CPU.
        Raises:
            UsageError: the embeddings' width is not the pipeline's.
        """
        embeds = torch.as_tensor(image_embeds, dtype=torch.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.embed_dim:
            raise UsageError(f"dream.unclip: the image embeddings have shape {tuple(embeds.shape)}, but "
                             f"{self.name} decodes (N, {self.embed_dim})")
        if not len(embeds):
            return torch.zeros((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        if self.cfg.embed_norm is not None:
            embeds = embeds / embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12) * self.cfg.embed_norm
        dtype = self.prompt_embeds.dtype
        prompt = self.prompt_embeds.expand(len(embeds), -1, -1)  # (N, tokens, width)
        self.pipe.set_progress_bar_config(disable=bar_off(progress))
        # The unconditional half of guidance is the same empty prompt with a zero image embedding
        # (the pipeline adds that zero itself): what it does when given neither prompt.
        images = self.pipe(image_embeds=embeds.to(self.device, dtype), prompt_embeds=prompt,
                           negative_prompt_embeds=prompt, height=self.image_size, width=self.image_size,
                           num_inference_steps=steps or self.cfg.steps,
                           guidance_scale=self.cfg.guidance if guidance is None else guidance,
                           noise_level=self.cfg.noise_level if noise_level is None else noise_level,
                           generator=generator, output_type="pt").images  # (N, 3, H, W) in [0, 1]
        return (images.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()


def decode_embeddings(dreamer: UnclipDreamer, embeddings: np.ndarray | torch.Tensor, *,
                      generator: torch.Generator, batch_size: int | None = None,
                      progress: bool = True) -> torch.Tensor:
    """Draw one image per embedding, ``batch_size`` at a time.

    Args:
        dreamer: from :func:`load_unclip`.
        embeddings: ``(N, D)`` OpenCLIP image embeddings (rows of ``openclip_frame`` or
            ``openclip``, blends of them...).
        generator: a CPU ``torch.Generator``: the same seed and batch size give the same images.
        batch_size: dreams per pass; ``None``: ``dream.unclip.batch_size``.
        progress: a progress bar over the batches.
    Returns:
        ``(N, 3, dreamer.image_size, dreamer.image_size)`` uint8 images on the CPU.
    Raises:
        UsageError: the embeddings' width is not the pipeline's.
    """
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    size = batch_size or dreamer.cfg.batch_size
    starts = range(0, len(embeddings), size)
    batches = [dreamer.decode(embeddings[s:s + size], generator)
               for s in tqdm(starts, desc="unclip", unit="batch", disable=bar_off(progress, len(starts) <= 1),
                             leave=False)]
    return torch.cat(batches) if batches else dreamer.decode(embeddings, generator)


def load_unclip(cfg: UnclipConfig, device: str, embed_dim: int | None = None) -> UnclipDreamer:
    """Load the Stable unCLIP pipeline in ``cfg.path`` onto ``device``, from local files only.

    Args:
        cfg: the ``dream.unclip`` config.
        device: ``"cpu"`` or ``"cuda"``; on CUDA the weights are cast to ``cfg.dtype``.
        embed_dim: width of the stored embeddings it will decode; checked against the
            pipeline's when given.
    Returns:
        an :class:`UnclipDreamer`.
    Raises:
        UsageError: no path, a missing folder, ``model_index.json`` or component folder,
            another pipeline, a component that does not load, ``cfg.noise_level`` past the
            pipeline's noise schedule, or an ``embed_dim`` that is not the pipeline's.
    """
    from diffusers import StableUnCLIPImg2ImgPipeline

    folder, index = _check_folder(cfg.path)
    absent = {name: None for name, entry in index.items()
              if not name.startswith("_") and (not isinstance(entry, list) or entry[0] is None)}
    dtype = DTYPES[cfg.dtype] if str(device).startswith("cuda") else torch.float32
    try:
        # A component that model_index.json lists as null is passed as None, or diffusers
        # refuses a pipeline saved without its tokenizer and text encoder.
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                           **absent)
    except Exception as exc:  # noqa: BLE001 -- diffusers and transformers raise many types for a damaged folder
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UsageError(f"dream.unclip.path {folder}: does not load as a {PIPELINE_CLASS} "
                         f"({type(exc).__name__}: {first_line})") from None
    pipe = pipe.to(device)

    width = int(pipe.image_normalizer.config.embedding_dim)
    if embed_dim is not None and embed_dim != width:
        raise UsageError(f"dream.unclip.path {folder} decodes {width}-d image embeddings, but the stored OpenCLIP "
                         f"vectors are {embed_dim}-d: models.openclip must be the CLIP the pipeline was trained "
                         "on (stable-diffusion-2-1-unclip: ViT-H-14, 1024-d)")
    levels = pipe.image_noising_scheduler.config.num_train_timesteps
    if cfg.noise_level >= levels:
        raise UsageError(f"dream.unclip.noise_level {cfg.noise_level}: the pipeline's noise levels run from "
                         f"0 to {levels - 1}")
    size = cfg.image_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    log.info("dream.unclip: %s loaded on %s (%s, %d-d embeddings, %d px)", folder, device, dtype, width, size)
    return UnclipDreamer(pipe, cfg, str(device), width, int(size), _empty_prompt(pipe, device, dtype),
                         f"unclip@{folder.name}")


def _check_folder(path: str | None) -> tuple[Path, dict]:
    """The pipeline folder and its ``model_index.json``, once that names the right pipeline
    and each component decoding needs has its folder."""
    if not path:
        raise UsageError("dream.unclip.path is not set: dream.backend unclip needs a Stable unCLIP folder on disk")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"dream.unclip.path {folder}: no such folder")
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise UsageError(f"dream.unclip.path {folder}: no model_index.json (not a diffusers pipeline folder)")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{index_file}: not readable JSON ({exc})") from None
    if index.get("_class_name") != PIPELINE_CLASS:
        raise UsageError(f"{index_file}: a {index.get('_class_name')!r}, not a {PIPELINE_CLASS} "
                         "(stable-diffusion-2-1-unclip is one)")
    for name in REQUIRED:
        entry = index.get(name)
        if not isinstance(entry, list) or entry[0] is None:
            raise UsageError(f"{index_file}: no {name} (decoding needs it)")
        if not (folder / name).is_dir():
            raise UsageError(f"dream.unclip.path {folder}: component folder {name}/ is missing "
                             "(model_index.json lists it)")
    return folder, index


def _empty_prompt(pipe: StableUnCLIPImg2ImgPipeline, device: str, dtype: torch.dtype) -> torch.Tensor:
    """``(1, tokens, width)``: the text encoder's embedding of "", or zeros without one."""
    if pipe.tokenizer is not None and pipe.text_encoder is not None:
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt("", device, 1, do_classifier_free_guidance=False)
        return embeds.to(dtype)
    log.info("dream.unclip: the pipeline has no text encoder; the prompt is zeros")
    return torch.zeros((1, CLIP_TOKENS, pipe.unet.config.cross_attention_dim), dtype=dtype, device=device)
