"""Issue 18: whether TENT at its defaults (domain setting) updates tiny MONAI networks of each normalisation family."""

import torch
from monai.networks.nets import UNETR, BasicUNet, SegResNet, UNet

from monai_tta.adapters import Tent

nets = {
    "BasicUNet (InstanceNorm)": lambda: BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 4, 4, 4, 4)
    ),
    "SegResNet (GroupNorm)": lambda: SegResNet(
        spatial_dims=2, in_channels=1, out_channels=2, init_filters=8, blocks_down=(1, 1), blocks_up=(1,)
    ),
    "UNETR (LayerNorm+InstanceNorm)": lambda: UNETR(
        in_channels=1,
        out_channels=2,
        img_size=(32, 32),
        feature_size=4,
        hidden_size=32,
        mlp_dim=64,
        num_heads=2,
        spatial_dims=2,
    ),
    "UNet (BatchNorm)": lambda: UNet(2, 1, 2, channels=(4, 8, 8), strides=(2, 2), norm="batch"),
}
for name, make in nets.items():
    torch.manual_seed(0)
    net = make().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ad = Tent(setting="domain", seed=0)
    acc = 0
    for i in range(3):
        ad(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(i)), net)
        acc += not ad.last_stats.get("safeguard_fallback", False)
    changed = sum(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    print(f"{name}: accepted {acc}/3, step {ad.last_stats['step']}, tensors changed {changed}")
