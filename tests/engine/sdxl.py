"""A randomly initialised checkpoint in the SDXL layout, for the GPU check.

As :mod:`tests.engine.sd15`: nothing is downloaded; the tensor names and shapes come
from ComfyUI's own SDXL UNet, its two CLIP text models and the VAE built on torch's
``meta`` device, turned into the original checkpoint's layout by ComfyUI's own SDXL
saving code, and the values are seeded noise. ComfyUI detects the result as SDXL from
its keys. About 3.5 B parameters: a ~7 GB fp16 file. Only usable after the runtime
booted (ComfyUI's modules on ``sys.path``, configured for this machine).
"""

from __future__ import annotations

from pathlib import Path

from tests.engine.sd15 import _SD15_VAE, _noise

# SDXL base's UNet, as ComfyUI's model detection describes it (comfy/model_detection.py).
_SDXL_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
# comfy.supported_models.SDXL's own unet_config (what identifies it).
_SDXL_MATCH = {
    "model_channels": 320,
    "use_linear_in_transformer": True,
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "context_dim": 2048,
    "adm_in_channels": 2816,
    "use_temporal_attention": False,
}


def sdxl_shapes() -> dict[str, tuple[int, ...]]:
    """Every floating-point tensor of an SDXL checkpoint, by its name in the original layout."""
    import comfy.ops
    import comfy.sdxl_clip
    import comfy.supported_models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    shapes: dict[str, tuple[int, ...]] = {}
    unet = UNetModel(**_SDXL_UNET, device="meta", operations=ops, dtype=torch.float16)
    shapes.update(
        {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in unet.state_dict().items()}
    )
    clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16)
    config = comfy.supported_models.SDXL(dict(_SDXL_MATCH))
    saved = config.process_clip_state_dict_for_saving(clip.state_dict())
    # position_ids are integers ComfyUI makes itself; logit_scale is unused by inference.
    shapes.update(
        {k: tuple(v.shape) for k, v in saved.items() if v.is_floating_point() and "logit" not in k}
    )
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=_SD15_VAE, embed_dim=4)
    shapes.update({f"first_stage_model.{k}": tuple(v.shape) for k, v in vae.state_dict().items()})
    return shapes


def write_sdxl_checkpoint(path: Path) -> Path:
    """A ~7 GB fp16 .safetensors ComfyUI loads as SDXL (weights ~N(0, 0.02))."""
    from safetensors.torch import save_file

    save_file(_noise(sdxl_shapes(), 0.02), str(path))
    return path
