"""What the bad-input checks cost: this checkout next to another one, in one run.

    python -m benchmarks.input_checks --base /path/to/other/checkout [--rounds 3]

For each checkout (a separate process with its own ``PYTHONPATH``), rounds
alternating:

1. the input pipeline on one CPU core (``python -m benchmarks.pipeline
   --pipeline-only`` in that checkout: decode + resize/flip/pad + ATSS encode), images/s;
2. loading a COCO split of 2000 synthetic 640x480 JPEGs into records
   (``load_coco(training=True)``, which now includes the quick image check),
   milliseconds;
3. ``atss-tf make-tfrecords --help``, seconds (process start to exit).

Rounds alternate the order of the checkouts (ABBA), so drift hits both alike.

Medians are printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, append_results, module_command

LOAD_SNIPPET = """
import json, sys, time
from atss_tf.data.coco import load_coco
best = []
for _ in range(3):
    t = time.perf_counter()
    ds = load_coco(sys.argv[1], sys.argv[2], training=True, image_check=sys.argv[3])
    best.append(time.perf_counter() - t)
import atss_tf
print(json.dumps({"ms": 1000 * min(best), "records": len(ds.records),
                  "boxes": ds.report["boxes_kept"], "file": atss_tf.__file__}))
"""

HELP_SNIPPET = """
import runpy, sys
sys.argv = ["atss-tf", "make-tfrecords", "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
"""


def _env(checkout: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(checkout), TF_CPP_MIN_LOG_LEVEL="3")


def pipeline(checkout: Path, images: int) -> float:
    """Images/s of ``checkout``'s own ``benchmarks.pipeline --pipeline-only``
    (run as a module from that checkout's root, which older checkouts allow too)."""
    proc = subprocess.run(
        module_command("pipeline", "--pipeline-only", "--images", str(images)),
        capture_output=True, text=True, check=True, env=_env(checkout), cwd=checkout,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])["images_per_second"]


def load(checkout: Path, annotations: str, images_dir: str, image_check: str = "quick") -> dict:
    """``load_coco(training=True)`` in ``checkout``'s own code: best of 3 ``ms``,
    ``records`` and ``boxes`` kept."""
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SNIPPET, str(annotations), str(images_dir), image_check],
        capture_output=True, text=True, check=True, env=_env(checkout), cwd=checkout,
    )  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(checkout)), out  # the checkout's own code ran
    return out


def help_seconds(checkout: Path, script: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", HELP_SNIPPET.format(script=str(script))],
        capture_output=True, text=True, check=True, env=_env(checkout), cwd=checkout,
    )  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--base-name", default="base", help="its name in the table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=48, help="pipeline images per round")
    args = parser.parse_args(argv)
    checkouts = {args.base_name: Path(args.base).resolve(), "this checkout": ROOT}

    from atss_tf.data.synthetic import generate_synthetic_coco

    results: dict[str, dict[str, list[float]]] = {
        n: {"pipe": [], "load": [], "help": []} for n in checkouts
    }
    with tempfile.TemporaryDirectory() as tmp:
        split = generate_synthetic_coco(tmp, 2000, (480, 640), seed=0, objects_per_image=(1, 3))
        script = Path(tmp) / "atss-tf"
        script.write_text("import sys\nfrom atss_tf.cli import main\nsys.exit(main())\n")
        for r in range(args.rounds):
            # ABBA order: a machine whose speed drifts hits both sides alike.
            for name, checkout in list(checkouts.items())[:: 1 if r % 2 == 0 else -1]:
                results[name]["pipe"].append(pipeline(checkout, args.images))
                results[name]["load"].append(
                    load(checkout, split.annotations, split.images_dir)["ms"]
                )
                results[name]["help"].append(help_seconds(checkout, script))
    rows = ["| measure | " + " | ".join(checkouts) + " |", "|---|" + "---|" * len(checkouts)]
    for key, label, fmt in (
        ("pipe", "input pipeline, 1 core, 640x480 -> 1024x1024 (images/s)", "{:.1f}"),
        ("load", "load_coco of 2000 images, training (ms, best of 3)", "{:.0f}"),
        ("help", "`atss-tf make-tfrecords --help` (s)", "{:.2f}"),
    ):
        values = [fmt.format(statistics.median(results[n][key])) for n in checkouts]
        rows.append(f"| {label} | " + " | ".join(values) + " |")
    spread = ", ".join(
        f"{n}: {min(results[n]['pipe']):.1f}-{max(results[n]['pipe']):.1f}" for n in checkouts
    )
    body = "\n".join(rows) + (
        f"\n\nMedians of {args.rounds} rounds in ABBA order; pipeline images/s ranged {spread}."
    )
    print(body)
    append_results(
        f"Cost of the bad-input checks: {args.base_name} vs this checkout (CPU)", body, argv
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
