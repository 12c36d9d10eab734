"""Readers of native dataset layouts, image checks, the split builder, pipelines and synthetic data."""

from shortcut_kd.data.cache import cached_dataset
from shortcut_kd.data.chexpert import read_chexpert
from shortcut_kd.data.generic import read_generic
from shortcut_kd.data.image_check import check_images
from shortcut_kd.data.isic2017 import read_isic2017
from shortcut_kd.data.readers import READERS, read_dataset
from shortcut_kd.data.simba import read_simba
from shortcut_kd.data.splits import ROLES, SplitSettings, build_splits, load_settings, load_split, write_splits
from shortcut_kd.data.transforms import build_transforms

__all__ = ["read_chexpert", "read_isic2017", "read_simba", "read_generic", "read_dataset", "READERS",
           "check_images", "SplitSettings", "build_splits", "write_splits", "load_split", "load_settings", "ROLES",
           "build_transforms", "cached_dataset"]
