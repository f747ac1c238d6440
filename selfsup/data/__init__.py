"""Image data: folders, arrays and built-in offline sets; reproducible two-view batches."""

from selfsup.data.datasets import (
    BUILTIN_DATASETS,
    ImageData,
    decode_into_memory,
    default_datasets_dir,
    load_image_data,
    load_test_split,
    match_classes,
)
from selfsup.data.images import BadImageError, read_rgb_image
from selfsup.data.loading import FileViewBatches, InMemoryViewBatches, PerImageViews

__all__ = ["BUILTIN_DATASETS", "BadImageError", "FileViewBatches", "ImageData", "InMemoryViewBatches",
           "PerImageViews", "decode_into_memory", "default_datasets_dir", "load_image_data", "load_test_split",
           "match_classes", "read_rgb_image"]
