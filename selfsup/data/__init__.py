"""Image data: folders, arrays and built-in offline sets; reproducible two-view batches."""

from selfsup.data.datasets import ImageData, default_datasets_dir, load_image_data
from selfsup.data.images import BadImageError, read_rgb_image
from selfsup.data.loading import FileTwoViewBatches, InMemoryTwoViewBatches, PerImageTwoViews

__all__ = ["BadImageError", "FileTwoViewBatches", "ImageData", "InMemoryTwoViewBatches", "PerImageTwoViews",
           "default_datasets_dir", "load_image_data", "read_rgb_image"]
