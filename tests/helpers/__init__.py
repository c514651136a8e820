"""What the tests share besides fixtures; import from the module by name
(``from tests.helpers.tiny import tiny_config``).

- ``fixtures``: the repository root, the official fixtures in ``../shared``
  (``fixture_path`` skips when absent), ``OFFICIAL_CHECKPOINTS`` and the
  converters of the authors' layouts (``inclusive_to_continuous``,
  ``fixture_head_outputs``).
- ``tiny``: the suite's tiny config (``TINY_OVERRIDES``, ``tiny_config``), its
  three-canvas variant (``THREE_CANVASES``), synthetic data for it
  (``with_synthetic_data``, ``one_step_config_file``) and the trailing
  arguments of the losses and postprocessing (``loss_args``, ``postprocess_args``).
- ``reference_atss``: the independent NumPy reference of ATSS (and FCOS)
  assignment the targets are checked against.
- ``journeys``: user-shaped datasets, shrunk shipped configs and the README's
  commands, for the journey tests.
- ``images``: image files made on purpose (``write_huge_png``).

Pytest fixtures live in ``tests/conftest.py``; scripts the tests run in a fresh
process live in ``tests/scripts/``. No module imports a ``test_*`` module or
``conftest`` (``tests/test_layout.py`` checks it).
"""
