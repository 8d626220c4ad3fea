"""A user's evaluation data: readers (image folder, CSV) and the on-disk uint8 image cache."""

from .imagecache import CachedImages, ImageTransform, cache_key, cached_images, transform_for
from .readers import (
    IMAGE_SUFFIXES,
    SPLITS,
    ImageDataset,
    SplitFiles,
    carve_val,
    open_dataset,
    read_csv,
    read_image_folder,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "CachedImages",
    "ImageDataset",
    "ImageTransform",
    "SplitFiles",
    "cache_key",
    "cached_images",
    "carve_val",
    "open_dataset",
    "read_csv",
    "read_image_folder",
    "transform_for",
]
