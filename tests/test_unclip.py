"""Stable unCLIP as the dream decoder (``dream/unclip.py``), on tiny random pipelines saved to disk.

The pipelines are built in code (after diffusers' own ``get_dummy_components`` for
``StableUnCLIPImg2ImgPipeline``), 16-d image embeddings, 8 px images: nothing is downloaded.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from core.config import UnclipConfig, load_config
from core.errors import ConfigError, UsageError
from dream.unclip import decode_embeddings, load_unclip

WIDTH = 16  # image-embedding width of the tiny pipelines (1024 for stable-diffusion-2-1-unclip)
TEXT_WIDTH = 16
TOKENS = 8


def _tiny_pipeline(tmp, text: bool) -> StableUnCLIPImg2ImgPipeline:
    torch.manual_seed(0)
    tokenizer = text_encoder = None
    if text:
        (tmp / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
        (tmp / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=TOKENS)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=3, hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2, norm_num_groups=4, cross_attention_dim=TEXT_WIDTH,
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * WIDTH)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=8, size=8),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=16, projection_dim=WIDTH, num_hidden_layers=1, num_attention_heads=2, image_size=8,
            intermediate_size=32, patch_size=4)),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=WIDTH),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        vae=AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, layers_per_block=1))


@pytest.fixture(scope="module")
def bare_folder(tmp_path_factory):
    """A pipeline saved without tokenizer and text encoder (model_index.json lists them as null)."""
    folder = tmp_path_factory.mktemp("unclip") / "bare"
    _tiny_pipeline(folder.parent, text=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unclip") / "text"
    _tiny_pipeline(folder.parent, text=True).save_pretrained(folder)
    return folder


def _cfg(folder, **kw) -> UnclipConfig:
    return UnclipConfig(path=str(folder), steps=2, guidance=3.0, **kw)


def _embeddings(n: int, width: int = WIDTH) -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # unit length, as stored


def test_dreams_have_the_pipelines_size_and_the_same_seed_gives_the_same_images(bare_folder):
    dreamer = load_unclip(_cfg(bare_folder), "cpu", embed_dim=WIDTH)
    assert (dreamer.embed_dim, dreamer.image_size) == (WIDTH, 8)
    vectors = _embeddings(3)
    images = decode_embeddings(dreamer, vectors, generator=torch.Generator().manual_seed(0), batch_size=2,
                               progress=False)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    again = decode_embeddings(dreamer, vectors, generator=torch.Generator().manual_seed(0), batch_size=2,
                              progress=False)
    assert torch.equal(images, again)
    other = decode_embeddings(dreamer, vectors, generator=torch.Generator().manual_seed(1), batch_size=2,
                              progress=False)
    assert not torch.equal(images, other)
    assert decode_embeddings(dreamer, vectors[:0], generator=torch.Generator(), progress=False).shape == (0, 3, 8, 8)


def test_the_pipeline_gets_scaled_embeddings_and_a_zero_prompt_directly(bare_folder):
    dreamer = load_unclip(_cfg(bare_folder, noise_level=5, embed_norm=20.0), "cpu")
    calls = []
    pipe = dreamer.pipe

    class Spy:
        def __call__(self, **kwargs):
            calls.append(kwargs)
            return pipe(**kwargs)

        def __getattr__(self, name):
            return getattr(pipe, name)

    dreamer.pipe = Spy()
    dreamer.decode(_embeddings(2), torch.Generator().manual_seed(0))
    (call,) = calls
    assert "image" not in call and "prompt" not in call
    assert torch.allclose(call["image_embeds"].norm(dim=1), torch.full((2,), 20.0))
    assert call["prompt_embeds"].shape == (2, 77, TEXT_WIDTH) and not call["prompt_embeds"].any()
    assert torch.equal(call["negative_prompt_embeds"], call["prompt_embeds"])
    assert (call["noise_level"], call["num_inference_steps"], call["guidance_scale"]) == (5, 2, 3.0)


def test_with_a_text_encoder_the_prompt_is_the_embedding_of_empty_text(text_folder):
    dreamer = load_unclip(_cfg(text_folder), "cpu", embed_dim=WIDTH)
    pipe = dreamer.pipe
    ids = pipe.tokenizer("", padding="max_length", max_length=TOKENS, return_tensors="pt").input_ids
    expected = pipe.text_encoder(ids)[0]  # (1, TOKENS, TEXT_WIDTH)
    assert dreamer.prompt_embeds.shape == (1, TOKENS, TEXT_WIDTH) and dreamer.prompt_embeds.any()
    assert torch.allclose(dreamer.prompt_embeds, expected)
    assert dreamer.decode(_embeddings(1), torch.Generator().manual_seed(0)).shape == (1, 3, 8, 8)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(UsageError, match=r"dream.unclip.path .*nowhere: no such folder"):
        load_unclip(_cfg(tmp_path / "nowhere"), "cpu")


def test_a_folder_without_model_index_is_named(tmp_path):
    with pytest.raises(UsageError, match=r"no model_index.json"):
        load_unclip(_cfg(tmp_path), "cpu")


def test_a_missing_component_is_named(bare_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bare_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(UsageError, match=r"component folder unet/ is missing"):
        load_unclip(_cfg(broken), "cpu")


def test_a_component_without_its_weights_is_a_usage_error_naming_the_folder(bare_folder, tmp_path):
    broken = tmp_path / "empty-unet"
    shutil.copytree(bare_folder, broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model*"):
        weights.unlink()
    with pytest.raises(UsageError, match=r"dream.unclip.path .*empty-unet: does not load as a StableUnCLIPImg2ImgPipeline"):
        load_unclip(_cfg(broken), "cpu")


def test_embeddings_of_another_width_are_refused_at_load_and_at_decode(bare_folder):
    with pytest.raises(UsageError, match=r"decodes 16-d image embeddings, but the stored OpenCLIP vectors are 1024-d"):
        load_unclip(_cfg(bare_folder), "cpu", embed_dim=1024)
    dreamer = load_unclip(_cfg(bare_folder), "cpu")
    with pytest.raises(UsageError, match=r"shape \(2, 768\).*decodes \(N, 16\)"):
        dreamer.decode(_embeddings(2, 768), torch.Generator())


def test_a_noise_level_past_the_schedule_is_named(bare_folder):
    with pytest.raises(UsageError, match=r"dream.unclip.noise_level 1000"):
        load_unclip(_cfg(bare_folder, noise_level=1000), "cpu")


def test_backend_unclip_without_a_path_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"dream.unclip.path must name"):
        load_config(None, ["dream.backend=unclip"])
    cfg = load_config(None, ["dream.backend=unclip", "dream.unclip.path=/somewhere"])
    assert (cfg.dream.backend, cfg.dream.unclip.path) == ("unclip", "/somewhere")
