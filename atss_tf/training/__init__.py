"""Training: the fit driver (:mod:`~atss_tf.training.fit`), the official optimizer
and schedule, and callbacks for checkpoint/resume, NaN stops, TensorBoard and COCO
evaluation during fit."""
