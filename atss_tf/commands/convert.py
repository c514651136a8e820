"""``atss-tf convert official CHECKPOINT.pth OUT.keras``: PyTorch weights -> ``.keras``."""

from __future__ import annotations

import argparse

from atss_tf.commands.common import add_config_arguments, find_config

FORMATS = ("official",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "format",
        choices=FORMATS,
        help="checkpoint family: 'official' = sfzhang15/ATSS (maskrcnn-benchmark) .pth",
    )
    parser.add_argument("checkpoint", help="torch.save checkpoint (read without torch)")
    parser.add_argument("output", help="model file to write, must end with .keras")
    add_config_arguments(
        parser,
        config_help="YAML config whose settings the checkpoint does not fix (anchors, data, "
        "training); architecture and normalisation always come from the checkpoint",
    )
    parser.add_argument(
        "--stride-in-1x1",
        choices=("auto", "true", "false"),
        default="auto",
        help="bottleneck stride on the 1x1 (official R-50/101) or the 3x3 (official X-101); "
        "auto: 1x1 unless the checkpoint is a ResNeXt",
    )


def run(args: argparse.Namespace) -> int:
    from atss_tf.config import load_config
    from atss_tf.convert import convert_official

    base = load_config(find_config(args.config) if args.config else None, args.overrides)
    stride = {"auto": None, "true": True, "false": False}[args.stride_in_1x1]
    result = convert_official(
        args.checkpoint, args.output, base, stride_in_1x1=stride, progress=True
    )
    b = result.config.model.backbone
    arch = (
        f"ResNet-{b.depth}"
        if b.groups == 1
        else f"ResNeXt-{b.depth} {b.groups}x{b.width_per_group}d"
    )
    head = result.config.model.head
    dcn = [*b.dcn_stages, *(["the head towers"] if head.dcn else [])]
    if dcn:
        arch += f", DCNv2 in {', '.join(dcn)}"
    print(f"converted {args.checkpoint} -> {result.output}")
    print(
        f"  backbone {arch} (stride_in_1x1={b.stride_in_1x1}), FPN "
        f"{result.config.model.fpn.channels} channels, "
        f"{result.config.model.num_classes} classes, "
        f"{result.config.model.anchors.anchors_per_location} anchor(s) per location"
    )
    print(f"  tensors mapped: {result.num_tensors}, parameters: {result.num_parameters:,}")
    if result.ignored:
        print(
            f"  ignored: {len(result.ignored)} ({', '.join(result.ignored[:4])}"
            f"{', ...' if len(result.ignored) > 4 else ''})"
        )
    print(
        "  settings: official_compat=True, BGR input, mean "
        f"{tuple(result.config.model.pixel_mean)}, std 1, score_mode=sqrt"
    )
    return 0
