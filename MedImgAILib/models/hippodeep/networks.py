"""The three hippodeep networks, written from the layer tables of SPEC.md (shared/models/hippodeep).

Parameter names match the published state_dicts exactly, so ``load_state_dict`` takes the files as they
are. The forward passes follow SPEC.md sections 2-4; comments name the places where a detail is easy to
get wrong (padding, what is added back after a residual block, the LayerNorms named ``bnaff``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv3(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, padding=1)


def _up2(x: torch.Tensor) -> torch.Tensor:
    # nearest-neighbour x2: out[i] = in[i // 2] on every spatial axis
    return F.interpolate(x, scale_factor=2, mode="nearest")


class HeadNet(nn.Module):
    """3-level 3-D U-Net on the 64^3 head box: 4 sigmoid maps (0 intracranial, 1 "cortex",
    2 cerebrum, 3 unnamed). Channels 1 and 3 only feed the affine network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0a, self.conv0b, self.bn0a = _conv3(1, 8), _conv3(8, 8), nn.BatchNorm3d(8)
        self.conv1a, self.conv1b, self.bn1a = _conv3(8, 16), _conv3(16, 24), nn.BatchNorm3d(24)
        self.conv2a, self.conv2b, self.bn2a = _conv3(24, 24), _conv3(24, 32), nn.BatchNorm3d(32)
        self.conv3a, self.conv3b, self.bn3a = _conv3(32, 48), _conv3(48, 48), nn.BatchNorm3d(48)
        self.conv2u, self.conv2v, self.bn2u = _conv3(48, 24), _conv3(24 + 32, 24), nn.BatchNorm3d(24)
        self.conv1u, self.conv1v, self.bn1u = _conv3(24, 24), _conv3(24 + 24, 24), nn.BatchNorm3d(24)
        self.conv0u, self.conv0v, self.bn0u = _conv3(24, 16), _conv3(16 + 8, 8), nn.BatchNorm3d(8)
        self.conv1x = nn.Conv3d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        elu = F.elu
        skip0 = elu(self.bn0a(self.conv0b(elu(self.conv0a(x)))))
        x = F.max_pool3d(skip0, 2)
        skip1 = elu(self.bn1a(self.conv1b(elu(self.conv1a(x)))))
        x = F.max_pool3d(skip1, 2)
        skip2 = elu(self.bn2a(self.conv2b(elu(self.conv2a(x)))))
        x = F.max_pool3d(skip2, 2)
        x = elu(self.bn3a(self.conv3b(elu(self.conv3a(x)))))
        # decoder: the upsampled path comes first in the concatenation, the skip second
        x = elu(self.conv2u(_up2(x)))
        x = elu(self.bn2u(self.conv2v(torch.cat([x, skip2], 1))))
        x = elu(self.conv1u(_up2(x)))
        x = elu(self.bn1u(self.conv1v(torch.cat([x, skip1], 1))))
        x = elu(self.conv0u(_up2(x)))
        x = elu(self.bn0u(self.conv0v(torch.cat([x, skip0], 1))))
        return torch.sigmoid(self.conv1x(x))


class AffineNet(nn.Module):
    """Encoder regressing the 3x4 affine from template-box to subject LAS-box normalised coordinates.

    Returns the 4x4 matrix T (column convention, rows in array-axis order). The published file does not
    hold the coordinate-grid buffers the original registered: they are not needed here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.convaff1 = _conv3(2, 16)
        self.convaff2 = _conv3(16, 16)
        # "bnaff" layers are LayerNorms over the 3 spatial axes of each channel (eps 1e-5), with an
        # element-wise affine of spatial shape shared by all channels
        self.bnaff2 = nn.LayerNorm([32, 32, 32])
        self.convaff3 = _conv3(16, 32)
        self.bnaff3 = nn.LayerNorm([16, 16, 16])
        self.convaff4 = _conv3(32, 64)
        self.bnaff4 = nn.LayerNorm([8, 8, 8])
        self.convaff5 = nn.Conv3d(64, 128, 1)
        self.convaff6 = nn.Conv3d(128, 12, 4)  # 4^3 -> 1, no padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool3d(F.relu(self.convaff1(x)), 2)
        x = F.max_pool3d(F.relu(self.bnaff2(self.convaff2(x))), 2)
        x = F.max_pool3d(F.relu(self.bnaff3(self.convaff3(x))), 2)
        x = F.max_pool3d(F.relu(self.bnaff4(self.convaff4(x))), 2)
        x = self.convaff6(F.relu(self.convaff5(x)))
        rows = x.reshape(-1, 3, 4)
        bottom = torch.zeros_like(rows[:, :1])
        return torch.cat([rows, bottom], dim=1) + torch.eye(4, dtype=x.dtype, device=x.device)


class HippoNet(nn.Module):
    """Hippocampus network on a 48x72x64 1 mm crop (one side, right-looking); output 44x68x60,
    the input shrunk by 2 voxels on every side."""

    def __init__(self) -> None:
        super().__init__()
        # separable first layer, all unpadded
        self.conv0a_0 = nn.Conv3d(1, 16, (1, 1, 3))
        self.conv0a_1 = nn.Conv3d(16, 16, (1, 3, 1))
        self.conv0a = nn.Conv3d(16, 16, (3, 1, 1))
        self.convf1 = nn.Conv3d(16, 48, 3)  # unpadded
        self.bn1 = nn.BatchNorm3d(48)
        self.convout0, self.convout1 = _conv3(48, 48), _conv3(48, 48)
        self.bn2 = nn.BatchNorm3d(48)
        self.convout2p, self.convout2 = _conv3(48, 48), _conv3(48, 48)
        self.convlx3, self.convlx5 = _conv3(48, 48), _conv3(48, 48)
        self.convlx7 = _conv3(48, 16)
        self.convlx8 = nn.Conv3d(16, 1, 1)
        self.blur = nn.Conv3d(1, 1, 7, padding=3)  # stored as a 7^3 box sum with bias -34.3
        self.conv_extract = _conv3(48, 47)
        self.convmix = _conv3(48, 16)
        self.convout1x = nn.Conv3d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in-place activations on fresh conv outputs: same numbers, a smaller peak footprint
        def relu(t: torch.Tensor) -> torch.Tensor:
            return F.relu(t, inplace=True)

        x = relu(self.conv0a(relu(self.conv0a_1(relu(self.conv0a_0(x))))))
        f1 = relu(self.convf1(x))
        # residual blocks: the pooled tensor *before* the BatchNorm is what is added back
        p1 = F.max_pool3d(f1, 2)
        x = relu(self.convout1(relu(self.convout0(self.bn1(p1)))) + p1)
        p2 = F.max_pool3d(x, 2)
        x = relu(self.convout2(relu(self.convout2p(self.bn2(p2)))) + p2)
        x = _up2(relu(self.convlx3(x)))
        x = _up2(relu(self.convlx5(x)))
        o1 = torch.sigmoid(self.convlx8(relu(self.convlx7(x))))
        del x
        gate = torch.sigmoid(self.blur(o1))
        x = F.leaky_relu(self.conv_extract(gate * f1), 0.01, inplace=True)
        del f1, gate
        x = relu(self.convmix(torch.cat([o1, x], 1)))
        return torch.sigmoid(self.convout1x(x))
