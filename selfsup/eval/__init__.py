"""Evaluation of a frozen encoder: weighted kNN, linear probe, and the table that compares them.

Heavier protocols (fine-tuning, detection, segmentation) live in their own modules and are imported
where used.
"""

from selfsup.eval.features import extract_features, pixel_features
from selfsup.eval.knn import knn_accuracy, knn_predict
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.eval.table import evaluation_table, format_table

__all__ = ["evaluation_table", "extract_features", "format_table", "knn_accuracy", "knn_predict",
           "linear_probe_accuracy", "pixel_features"]
