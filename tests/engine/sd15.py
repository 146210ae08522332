"""A randomly initialised checkpoint in the SD1.5 layout, and a LoRA for it.

Nothing is downloaded: the tensor names and shapes come from ComfyUI's own
UNet, CLIP text model and VAE classes built on torch's ``meta`` device (no
memory), and the values are seeded noise. ComfyUI detects the result as SD1.5
from its keys, exactly as it does a real checkpoint. Only usable after the
runtime booted (ComfyUI's modules on ``sys.path``, configured for this machine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The SD1.5 architecture (v1-inference.yaml), in the form ComfyUI's UNetModel takes.
_SD15_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "legacy": False,
    "adm_in_channels": None,
}
_SD15_VAE = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
# Kohya-style names real SD1.5 LoRAs use: (name, in features, out features).
LORA_LAYERS = [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0", 1280, 1280),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2", 1280, 320),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
    ("lora_te_text_model_encoder_layers_11_mlp_fc1", 768, 3072),
]
_SEED = 1234
_POOL = 1 << 22  # values drawn once, then tiled: 1 B parameters in ~2 s, not ~11 s


def sd15_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of an SD1.5 checkpoint, by its name in the original .ckpt layout."""
    import comfy.clip_model
    import comfy.ops
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    shapes: dict[str, tuple[int, ...]] = {}
    unet = UNetModel(**_SD15_UNET, device="meta", operations=ops, dtype=torch.float16)
    shapes.update(
        {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in unet.state_dict().items()}
    )
    clip_config = json.loads(
        (Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text()
    )
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float16, "meta", ops)
    shapes.update(
        {f"cond_stage_model.transformer.{k}": tuple(v.shape) for k, v in clip.state_dict().items()}
    )
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=_SD15_VAE, embed_dim=4)
    shapes.update({f"first_stage_model.{k}": tuple(v.shape) for k, v in vae.state_dict().items()})
    return shapes


def _noise(shapes: dict[str, tuple[int, ...]], scale: float) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(_SEED)
    pool = (torch.randn(_POOL, generator=generator) * scale).to(torch.float16)
    tensors: dict[str, Any] = {}
    for i, (name, shape) in enumerate(shapes.items()):
        count = int(torch.Size(shape).numel())
        start = (i * 7919) % (_POOL // 2)
        flat = pool[start : start + count]
        if flat.numel() < count:
            flat = pool.repeat(count // _POOL + 2)[start : start + count]
        tensors[name] = flat.reshape(shape).clone()
    return tensors


def write_sd15_checkpoint(path: Path) -> Path:
    """A ~2.1 GB fp16 .safetensors ComfyUI loads as SD1.5 (weights ~N(0, 0.02))."""
    from safetensors.torch import save_file

    save_file(_noise(sd15_shapes(), 0.02), str(path))
    return path


def write_lora(path: Path, rank: int = 4) -> Path:
    """A LoRA for SD1.5's UNet and text encoder, strong enough to change an image."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(_SEED + 1)
    tensors: dict[str, Any] = {}
    for name, fan_in, fan_out in LORA_LAYERS:
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator).half()
        tensors[f"{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator).half()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank)).half()
    save_file(tensors, str(path))
    return path
