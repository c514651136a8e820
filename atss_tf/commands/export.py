"""``atss-tf export --weights W --out DIR``: a SavedModel for TF Serving in ``DIR/<version>/``.

``--format litert``: ``DIR/model.tflite`` and ``DIR/model.json`` for the LiteRT
interpreter instead, decoding and NMS inside, optionally quantized
(``--quantize``); see :mod:`atss_tf.export_litert`.

Pre-processing (decode, test-time resize, canvases), the network, decoding and
class-aware NMS all run inside the SavedModel; see :mod:`atss_tf.export`.
``--tta``: the authors' test-time augmentation too, every pass and the merge
(the config's ``tta`` section); see :mod:`atss_tf.export_tta`.
"""

from __future__ import annotations

import argparse
import os

from atss_tf import files
from atss_tf.commands.common import add_config_arguments, find_config
from atss_tf.config import SERVING_INPUT_TYPES
from atss_tf.errors import UsageError


def canvas_list(text: str) -> list[tuple[int, int]]:
    """``"800x1088,1088x800"`` -> ``[(800, 1088), (1088, 800)]`` (height x width)."""
    canvases = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} is not HEIGHTxWIDTH (e.g. --canvases 800x1088,1088x800)"
            )
        canvases.append((int(parts[0]), int(parts[1])))
    return canvases


def add_arguments(parser) -> None:
    add_config_arguments(
        parser,
        config_help="YAML config for the test-time resize and canvases (default: the model's "
        "own); needed with a .weights.h5 checkpoint",
    )
    parser.add_argument("--weights", required=True, help=".keras model or .weights.h5 checkpoint")
    parser.add_argument(
        "--out", required=True, help="model base folder; the SavedModel goes to OUT/VERSION/"
    )
    parser.add_argument(
        "--format",
        choices=("savedmodel", "litert"),
        default="savedmodel",
        help="savedmodel (TF Serving, default) or litert (OUT/model.tflite and OUT/model.json "
        "for the LiteRT interpreter, on the first canvas)",
    )
    parser.add_argument(
        "--quantize",
        default=None,
        metavar="{float16,dynamic}",
        help="with --format litert: float16 weights, or int8 weights (dynamic); default "
        "float32. Full int8 is not available (TensorFlow's calibrator crashes on the NMS loops)",
    )
    parser.add_argument(
        "--input-type",
        choices=SERVING_INPUT_TYPES,
        default=None,
        help="what the signature takes as 'inputs': string [B] encoded images (default), "
        "uint8 [B, H, W, 3] images, or string [B] serialized tf.train.Example (SavedModel only)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="fix the batch size (default: any)"
    )
    parser.add_argument("--min-size", type=int, default=None, help="test-time shorter side")
    parser.add_argument("--max-size", type=int, default=None, help="test-time longer-side cap")
    parser.add_argument(
        "--canvases",
        type=canvas_list,
        default=None,
        metavar="HxW[,HxW...]",
        help="test-time canvases, multiples of 32 (default: the model's own; with "
        "--min-size/--max-size, a landscape and a portrait one that fit those sizes)",
    )
    parser.add_argument(
        "--normalized-boxes",
        action="store_true",
        help="detection_boxes in [0, 1] of the image height and width (default: pixels)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="run the test-time augmentation inside (the tta section of --config / --set; "
        "the test size comes from data.min_size and data.max_size)",
    )
    parser.add_argument(
        "--tta-image-sizes",
        type=canvas_list,
        default=None,
        metavar="HxW[,HxW...]",
        help="with --tta: original image sizes whose passes get exact canvases, giving what "
        "predict --tta gives; other sizes are padded onto larger canvases",
    )
    parser.add_argument(
        "--version", type=int, default=1, help="the version folder's number (default 1)"
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="do not write assets.extra/tf_serving_warmup_requests",
    )


def litert_options(args) -> None:
    """Check the options of ``--format litert`` (and that its own options come with it).

    Raises:
        UsageError: an option that does not apply, naming it.
    """
    if args.format != "litert":
        if args.quantize is not None:
            raise UsageError("--quantize applies to --format litert only")
        return
    given = [
        flag
        for flag, value in (
            ("--tta", args.tta or None),
            ("--tta-image-sizes", args.tta_image_sizes),
            ("--input-type", args.input_type),
            ("--batch-size", args.batch_size),
            ("--no-warmup", None if args.warmup else True),
        )
        if value is not None
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} do not apply with --format litert (one uint8 image of the "
            "first canvas in, no TTA, no warm-up)"
        )
    from atss_tf.export_litert import check_quantize

    check_quantize(args.quantize)


def run(args) -> int:
    from atss_tf.config import DEFAULT_MAX_PIXELS, load_config

    config = load_config(find_config(args.config), args.overrides) if args.config else None
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")

    litert_options(args)
    if args.input_type is None:
        args.input_type = "image_bytes"
    if args.tta_image_sizes is not None and not args.tta:
        raise UsageError("--tta-image-sizes needs --tta")
    if args.tta:
        given = [f for f in ("min_size", "max_size", "canvases") if getattr(args, f) is not None]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise UsageError(
                f"{flags} do not apply with --tta: each pass has its own size and canvases; "
                "set data.min_size / data.max_size in --config and name image sizes with "
                "--tta-image-sizes"
            )

    from atss_tf.data.inference_input import inference_config
    from atss_tf.export import OUTPUT_KEYS, export_saved_model
    from atss_tf.inference import load_detector, test_transform

    model = load_detector(args.weights, config)
    # --set data.min_size/max_size without data.canvases: canvases that fit them.
    config = inference_config(model.detector_config, config, args.overrides)
    params = test_transform(model, config)
    max_pixels = config.data.max_image_pixels if config is not None else DEFAULT_MAX_PIXELS
    if args.format == "litert":
        return run_litert(args, model, params)
    if args.tta:
        from atss_tf.export_tta import export_tta_saved_model

        path = export_tta_saved_model(
            model,
            args.out,
            config=config,
            tta=(config or load_config(None, args.overrides)).tta,
            image_sizes=args.tta_image_sizes or (),
            input_type=args.input_type,
            batch_size=args.batch_size,
            normalized_boxes=args.normalized_boxes,
            max_pixels=max_pixels,
            version=args.version,
            warmup=args.warmup,
        )
    else:
        path = export_saved_model(
            model,
            args.out,
            input_type=args.input_type,
            batch_size=args.batch_size,
            **_test_sizes(args, params),
            normalized_boxes=args.normalized_boxes,
            max_pixels=max_pixels,
            version=args.version,
            warmup=args.warmup,
        )
    batch = "B" if args.batch_size is None else str(args.batch_size)
    shape = (
        f"uint8 [{batch}, H, W, 3]" if args.input_type == "image_tensor" else f"string [{batch}]"
    )
    print(f"Wrote {path} (signature serving_default: inputs {shape} {args.input_type}; outputs")
    print(f"  {', '.join(OUTPUT_KEYS)})")
    base = os.path.dirname(path)
    if files.is_remote(base):
        name = os.path.basename(base)
        print(
            "Serve it with: tensorflow_model_server --rest_api_port=8501 "
            f"--model_name={name} --model_base_path={base}"
        )
    else:
        base = os.path.abspath(base)
        name = os.path.basename(base)
        print(
            "Serve it with: docker run -p 8501:8501 "
            f"-v {base}:/models/{name} -e MODEL_NAME={name} tensorflow/serving"
        )
    return 0


def _test_sizes(args, params) -> dict:
    """``min_size``, ``max_size`` and ``canvases`` of an export: the flags, else
    the model's. ``--min-size/--max-size`` without ``--canvases`` give ``None``
    canvases, which the exporters fit to the sizes."""
    sized = (args.min_size, args.max_size) != (None, None)
    return {
        "min_size": max(params.min_size) if args.min_size is None else args.min_size,
        "max_size": params.max_size if args.max_size is None else args.max_size,
        "canvases": args.canvases if args.canvases is not None or sized else params.canvases,
    }


def run_litert(args, model, params) -> int:
    """``--format litert``: write and describe ``OUT/model.tflite`` (the test
    size and canvases chosen as for the SavedModel; the first canvas is the input)."""
    from atss_tf.export_litert import LITERT_OUTPUT_KEYS, METADATA_FILE, export_litert

    path = export_litert(
        model,
        args.out,
        **_test_sizes(args, params),
        quantize=args.quantize,
        normalized_boxes=args.normalized_boxes,
    )
    meta = files.join(os.path.dirname(path), METADATA_FILE)
    print(f"Wrote {path} ({args.quantize or 'float32'}) and {meta}")
    print(
        "  inputs: image uint8 [1, H, W, 3] (RGB, resized by the test-time rule, top-left on "
        "the canvas), image_info float32 [1, 4, 2]"
    )
    print(f"  outputs: {', '.join(LITERT_OUTPUT_KEYS)}")
    return 0
