"""Configuration: nested dataclasses, loaded from YAML, with dotted overrides.

Every setting of the detector lives here, with the official ATSS R-50 defaults.
A YAML file mirrors the dataclass tree; unknown keys are errors that name the
key (``model.head.num_conv``), and ``--set model.head.num_convs=2`` style
overrides are parsed as YAML scalars and type-checked the same way.

The ``official_compat`` switch (ATSS_SPEC §0) groups the places where the
authors' inclusive-pixel code differs from clean continuous geometry. Each can
also be set on its own; ``None`` means "follow ``official_compat``" and is
made concrete once, when the :class:`Config` is built (``Config(...)``,
:func:`from_dict`, :func:`load_config`). Everything downstream reads concrete
values from its own section: anchors from ``model.anchors``, the selectors
from ``assigner``, the losses from ``loss``, post-processing from
``postprocess``, and box coding from ``model``.

:class:`DetectorConfig` is the part a saved model carries (network, anchors,
normalisation, box geometry, post-processing, class names, test-time input
size): no data paths and no schedule.

The package, one concern a module (everything is importable from here):

* :mod:`~atss_tf.config.schema`: the dataclasses and constants; each setting
  declares its check beside its default.
* :mod:`~atss_tf.config.tta`: the ``tta`` section (test-time augmentation).
* :mod:`~atss_tf.config.checks`: the check vocabulary (choices, ranges, tuple
  shapes, ...), each saying what it expects in the words of the messages.
* :mod:`~atss_tf.config.validation`: :func:`validate`, one walker applying
  every declared check, then the rules across settings.
* :mod:`~atss_tf.config.conversion`: dicts <-> dataclasses, strict keys and types.
* :mod:`~atss_tf.config.loading`: YAML files, ``base:``, ``--set`` overrides,
  shipped configs, renamed keys, saving.
"""

from atss_tf.config.conversion import to_dict
from atss_tf.config.loading import (
    MOVED_KEYS,
    apply_overrides,
    config_differences,
    detector_config_from_dict,
    find_config,
    from_dict,
    load_config,
    override_keys,
    save_config,
    shipped_configs_dir,
)
from atss_tf.config.schema import (
    ANCHOR_ALIGNMENTS,
    ASSIGNERS,
    BAD_IMAGE_POLICIES,
    BOX_LOSSES,
    DEFAULT_MAX_PIXELS,
    FCOS_ASSIGNERS,
    IMAGE_CHECKS,
    PRECISIONS,
    REGRESSIONS,
    SERVING_INPUT_TYPES,
    STRATEGIES,
    AnchorConfig,
    AssignerConfig,
    BackboneConfig,
    Config,
    DataConfig,
    DetectorConfig,
    FPNConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    PostprocessConfig,
    TrainConfig,
)
from atss_tf.config.tta import MERGE_TYPES, TTAConfig
from atss_tf.config.validation import validate, validate_detector_config
from atss_tf.errors import ConfigError

__all__ = [
    "ANCHOR_ALIGNMENTS",
    "ASSIGNERS",
    "BAD_IMAGE_POLICIES",
    "BOX_LOSSES",
    "DEFAULT_MAX_PIXELS",
    "FCOS_ASSIGNERS",
    "IMAGE_CHECKS",
    "MERGE_TYPES",
    "MOVED_KEYS",
    "PRECISIONS",
    "REGRESSIONS",
    "SERVING_INPUT_TYPES",
    "STRATEGIES",
    "AnchorConfig",
    "AssignerConfig",
    "BackboneConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DetectorConfig",
    "FPNConfig",
    "HeadConfig",
    "LossConfig",
    "ModelConfig",
    "PostprocessConfig",
    "TTAConfig",
    "TrainConfig",
    "apply_overrides",
    "config_differences",
    "detector_config_from_dict",
    "find_config",
    "from_dict",
    "load_config",
    "override_keys",
    "save_config",
    "shipped_configs_dir",
    "to_dict",
    "validate",
    "validate_detector_config",
]
