"""Build a pipeline with Stable Diffusion 1.5's architecture from a locally written config (random weights).

No model hub is reachable, so tests of "any SD-1.x directory" and the real-scale export use this: the
same classes, block types, attention layout, scheduler and VAE factor as SD-1.5. ``reduced=True``
shrinks every width so that tests run in seconds; ``reduced=False`` gives SD-1.5's real layer sizes
(860M UNet parameters).
"""
from __future__ import annotations

from pathlib import Path

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
REDUCED = dict(
    unet=dict(sample_size=8, block_out_channels=(32, 64, 128, 128), cross_attention_dim=64),
    vae=dict(sample_size=64, block_out_channels=(32, 32, 64, 64)),
    text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, projection_dim=64),
)
PROMPT_WORDS = "a photo of an astronaut riding horse on the moon cat dog red blue painting".split()


def build_sd15_pipeline(out_dir: Path, reduced: bool = True, seed: int = 0) -> Path:
    """Write a StableDiffusionPipeline directory with SD-1.5's architecture and random weights."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from edgekit.zoo.tokenizer import write_clip_tokenizer

    unet_cfg = {**SD15_UNET, **(REDUCED["unet"] if reduced else {})}
    vae_cfg = {**SD15_VAE, **(REDUCED["vae"] if reduced else {})}
    text_cfg = {**SD15_TEXT, **(REDUCED["text"] if reduced else {})}
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp), PROMPT_WORDS, text_cfg["max_position_embeddings"])
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **text_cfg))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_cfg), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet_cfg), scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)
