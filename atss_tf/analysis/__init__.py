"""Sample selection at work: ``atss-tf analyze`` and notebook 03.

:mod:`atss_tf.analysis.selection` runs selectors over a dataset and
summarises; :mod:`atss_tf.analysis.pictures` draws the results.
"""

from atss_tf.analysis.selection import (
    SelectionResult,
    analyze_selection,
    expected_positives,
    headline_check,
    summarize,
    training_geometry,
)

__all__ = [
    "SelectionResult",
    "analyze_selection",
    "expected_positives",
    "headline_check",
    "summarize",
    "training_geometry",
]
