"""What each adapter updates on MONAI's segmentation networks: a Markdown table of parameter counts.

    python tools/network_params.py    # the table of docs/methods/3d.md

For each network (MONAI defaults except the sizes, 3D, 1 input and 2 output channels) it lists the normalisation
layers, the total parameter count and the parameters each method's default set updates (``params="norm"``), or the
error the method raises on its first call. The counts do not depend on the weights, which are random.
"""

from __future__ import annotations

import sys

import torch
from monai.networks.nets import UNETR, BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet

from monai_tta.adapters import SAR, VPTTA, GraTa, NormAdapt, Tent
from monai_tta.params import norm_layer_kinds
from monai_tta.reports import markdown_table

NETWORKS = {
    "UNet(norm='batch')": lambda: UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch"),
    "UNet (default: instance, no affine)": lambda: UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2),
    "BasicUNet": lambda: BasicUNet(3, 1, 2),
    "SegResNet": lambda: SegResNet(3, in_channels=1, out_channels=2),
    "DynUNet": lambda: DynUNet(3, 1, 2, [3] * 5, [1, 2, 2, 2, 2], [2, 2, 2, 2]),
    "UNETR": lambda: UNETR(1, 2, (96, 96, 96)),
    "SwinUNETR": lambda: SwinUNETR(in_channels=1, out_channels=2, feature_size=48),
}
METHODS = {"Tent": Tent, "SAR": SAR, "GraTa": GraTa, "NormAdapt": NormAdapt, "VPTTA": VPTTA}


def count(cls, network) -> str:
    try:
        return f"{cls().n_params(network):,}"
    except ValueError as e:
        return "error: nothing to update" if "nothing to update" in str(e) else "error: no BN statistics"


def main() -> int:
    torch.manual_seed(0)
    table: dict[str, dict[str, str]] = {}
    for name, build in NETWORKS.items():
        try:
            network = build().eval()
        except ImportError as e:  # UNETR and SwinUNETR need einops
            table[name] = {"normalisation layers": f"not built: {e.__class__.__name__}"}
            continue
        table[name] = {
            "normalisation layers": ", ".join(norm_layer_kinds(network)),
            "parameters": f"{sum(p.numel() for p in network.parameters()):,}",
            **{method: count(cls, network) for method, cls in METHODS.items()},
        }
    print(markdown_table(table, ["normalisation layers", "parameters", *METHODS], row_title="network", formatter=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
