"""The facts of a pipeline's UNet that size its inputs and activations (latent shape, first-block channels,
text-state width), read from the UNet's config (edgekit.modeldir) without building the model; diffusers'
defaults where the config leaves them out."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UNetLayout:
    in_channels: int
    height: int
    width: int
    first_channels: int  # block_out_channels[0]
    cross_attention_dim: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.in_channels, self.height, self.width


def unet_layout(model_dir: Path) -> UNetLayout:
    """The layout of the UNet of ``model_dir`` (a path or an edgekit.modeldir.ModelDir)."""
    from edgekit.modeldir import ModelDir

    model = model_dir if isinstance(model_dir, ModelDir) else ModelDir.unchecked(model_dir)
    return model.unet_layout


def layout_of_config(config: dict) -> UNetLayout:
    """The layout a UNet config (config.json, parsed) gives."""
    size = config.get("sample_size", 64)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    cross = config.get("cross_attention_dim", 768)
    return UNetLayout(in_channels=int(config.get("in_channels", 4)), height=int(height), width=int(width),
                      first_channels=int(config.get("block_out_channels", [320])[0]),
                      cross_attention_dim=int(cross[0] if isinstance(cross, (list, tuple)) else cross))
