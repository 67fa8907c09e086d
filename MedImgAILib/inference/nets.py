"""The project's own networks (registered for ``runner.kind: native``)."""

from __future__ import annotations

from typing import Sequence

from monai.networks.nets import UNet

from .native import register_network


def lung_nodule_unet(
    channels: Sequence[int] = (8, 16, 32, 64),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 0,
    out_channels: int = 2,
    dropout: float = 0.0,
) -> UNet:
    """A small MONAI 3D U-Net: 1 channel in (windowed CT), background/nodule logits out.

    Small on purpose: it is trained on 2 CPU cores in minutes and must run on a laptop CPU; the
    receptive field (3 poolings at 1.5 mm) spans ~ 30 mm, enough to see that a vessel continues
    beyond the field and a nodule does not."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm="batch",
        dropout=dropout,
    )


register_network("ct-lung-nodule-unet", lung_nodule_unet)
