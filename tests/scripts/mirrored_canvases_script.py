"""Run by test_mirrored_fit.py in a fresh process: a landscape and a portrait
canvas under MirroredStrategy (2 logical CPUs) against one device, same batches.
Alternating between two canvases is what "each canvas compiled once" needs; a
third would add its six traces (train, evaluate, predict, on both models) to
the slowest test of the slow lane.

Prints one json line: weights after 6 fit steps, losses of evaluate, and the
detections of predict, each compared between the two, plus the trace counts;
then, on the one-device model, predict_on_batch on each canvas and detect on
photos of each orientation, with what they compiled.
"""

import json
import sys
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from atss_tf.data.pipeline import build_dataset  # noqa: E402
from atss_tf.inference import detect  # noqa: E402
from atss_tf.targets import TargetEncoder  # noqa: E402
from atss_tf.training.fit import build_training_model, make_strategy  # noqa: E402
from tests.helpers.journeys import SPARSE_CATEGORIES, make_dataset  # noqa: E402
from tests.helpers.tiny import TWO_CANVASES, tiny_config  # noqa: E402

data = make_dataset(Path(sys.argv[1]), SPARSE_CATEGORIES, n_train=24, n_val=8)
cfg = tiny_config([*TWO_CANVASES, "train.warmup_iters=0"])
for key, value in data.items():
    setattr(cfg.data, key, value)

# Six fixed batches (both canvases among them), taken once so both models see the same.
train = build_dataset(
    cfg, "train", encoder_factory=lambda s: TargetEncoder.from_config(cfg, s), seed=0
)
batches = list(train.take(6))
canvases = sorted({tuple(x["images"].shape[1:3]) for x, _ in batches})


def as_dataset(batches):
    """One dataset whose elements keep each batch's own canvas."""
    ds = tf.data.Dataset.from_tensors(batches[0])
    for b in batches[1:]:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(b))
    return ds


single = build_training_model(cfg)
strategy = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
mirrored = build_training_model(cfg, strategy)
mirrored.set_weights(single.get_weights())

results = {"replicas": strategy.num_replicas_in_sync, "canvases": canvases}
for name, model in (("single", single), ("mirrored", mirrored)):
    # The same six batches in the same order; fit splits each over the replicas.
    model.fit(as_dataset(batches), epochs=1, verbose=0)
    results[f"{name}_train_traces"] = model.train_function.step.tracing_counts()
diffs = [np.abs(a - b).max() for a, b in zip(single.get_weights(), mirrored.get_weights())]
scale = max(np.abs(w).max() for w in single.get_weights())
results["max_weight_diff"] = float(max(diffs))
results["weight_scale"] = float(scale)

val = [b for b in build_dataset(cfg, "val", with_gt=True) if b[0]["images"].shape[0] == 2]
losses = {n: m.evaluate(as_dataset(val), verbose=0, return_dict=True) for n, m in
          (("single", single), ("mirrored", mirrored))}  # fmt: skip
results["eval_loss"] = [losses["single"]["loss"], losses["mirrored"]["loss"]]
results["mirrored_test_traces"] = mirrored.test_function.step.tracing_counts()

images = as_dataset([x for x, _ in val])
p1, p2 = single.predict(images, verbose=0), mirrored.predict(images, verbose=0)
results["num_detections"] = [p1["num_detections"].tolist(), p2["num_detections"].tolist()]
results["max_box_diff"] = float(np.abs(p1["boxes"] - p2["boxes"]).max())
results["max_score_diff"] = float(np.abs(p1["scores"] - p2["scores"]).max())
results["mirrored_predict_traces"] = mirrored.predict_function.step.tracing_counts()
results["single_test_traces"] = single.test_function.step.tracing_counts()

# predict_on_batch on the canvases in turn, then detect on raw photos of each
# orientation (twice, in opposite orders): the compiled signatures are reused.
seen = len(single.predict_function.step.signatures)
rng = np.random.default_rng(0)
for canvas in canvases * 2:
    single.predict_on_batch(rng.uniform(0, 255, (2, *canvas, 3)).astype("float32"))
results["predict_on_batch_signatures_added"] = len(single.predict_function.step.signatures) - seen
seen = len(single.predict_function.step.signatures)
photos = [
    rng.integers(0, 256, size, dtype=np.uint8)
    for size in ((72, 120, 3), (130, 70, 3), (100, 100, 3), (64, 150, 3))
]
first = detect(single, photos, batch_size=2)
again = detect(single, photos[::-1], batch_size=2)[::-1]
counts = single.predict_function.step.tracing_counts()
results["single_predict_traces"] = counts
results["detect_signatures_added"] = len(counts) - seen
results["detect_same_classes"] = all(
    np.array_equal(a["classes"], b["classes"]) for a, b in zip(first, again)
)
results["detect_max_box_diff"] = max(
    float(np.abs(a["boxes"] - b["boxes"]).max()) for a, b in zip(first, again)
)
results["detect_max_score_diff"] = max(
    float(np.abs(a["scores"] - b["scores"]).max()) for a, b in zip(first, again)
)
results["detect_counts"] = [len(d["scores"]) for d in first]
results["detect_inside_photo"] = all(
    bool((d["boxes"][:, [0, 2]] <= p.shape[1] + 1e-3).all())
    and bool((d["boxes"][:, [1, 3]] <= p.shape[0] + 1e-3).all())
    for p, d in zip(photos, first)
)
print(json.dumps(results))
