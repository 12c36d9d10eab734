"""A preprocessing cache shared by every stage and run that preprocesses the same items the same way.

MONAI's ``PersistentDataset`` stores each item's deterministic preprocessing on disk; this module adds
the two keys it needs to be shared safely:

- the **item key** leaves out ``role`` (the test sets are the same images under another name), so the
  ``unbiased`` and ``aligned`` copies of an image with the same shortcut flag are preprocessed once;
- the **transform key** hashes the deterministic transforms themselves (their pickled state: readers,
  channel count, shortcut preset, its parameters and seed, intensity mode, size), so changing any of them
  writes a new cache entry instead of reading a stale one. MONAI's own ``hash_transform`` falls back to the
  transform class names when the transforms are not JSON-serialisable, which would miss such a change.

A fully deterministic pipeline is also held in memory (``CacheDataset`` over the persistent one), so an
epoch reads no files; a pipeline with random augmentation re-draws them after the cached head.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = ["cached_dataset", "item_hash", "transform_hash", "PASS_THROUGH_KEYS"]

PASS_THROUGH_KEYS = ("role",)
"""Datalist fields that do not change an item's preprocessing."""


def item_hash(item: Mapping[str, Any]) -> bytes:
    """A key of ``item`` for the cache: every field but :data:`PASS_THROUGH_KEYS`, in sorted order."""
    fields = sorted((str(k), repr(v)) for k, v in item.items() if k not in PASS_THROUGH_KEYS)
    return hashlib.sha256(repr(fields).encode()).hexdigest().encode()


def transform_hash(transforms: Sequence[Callable]) -> bytes:
    """A key of the deterministic head of a pipeline: a digest of the transforms' pickled state."""
    return hashlib.sha256(pickle.dumps(list(transforms), protocol=4)).hexdigest()[:16].encode()


def _is_deterministic(transform: Compose) -> bool:
    return transform.get_index_of_first(
        lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)) is None


class _PlainTensorPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose freshly computed items have the types of the items it reads back.

    MONAI stores an item converted to plain tensors (``track_meta=False``) but returns the item it has just
    computed as it is (MetaTensor images); a batch mixing the two cannot be collated. Converting on the way
    out too makes the first epoch's items identical to every later epoch's.
    """

    def _pre_transform(self, item_transformed: Any) -> Any:
        from monai.utils import convert_to_tensor

        item = super()._pre_transform(item_transformed)
        return convert_to_tensor(item, convert_numeric=False, track_meta=self.track_meta)


def cached_dataset(data: Sequence[Mapping[str, Any]], transform: Callable, cache_dir: str | os.PathLike | None = None,
                   cache_rate: float = 1.0, num_workers: int | None = 0, progress: bool = False) -> Dataset:
    """A MONAI dataset of ``data`` whose deterministic preprocessing is computed once per cache folder.

    Args:
        data: the datalist.
        transform: the preprocessing (a MONAI ``Compose``; random transforms run after the cached head).
        cache_dir: the shared cache folder (``PersistentDataset``); None keeps MONAI's in-memory
            ``CacheDataset`` alone (nothing on disk, nothing shared between stages).
        cache_rate: share of the items also held in memory (0: read from disk each time).
        num_workers: threads that fill the in-memory cache.
        progress: show a progress bar while filling it.
    """
    compose = transform if isinstance(transform, Compose) else Compose(transform)
    workers = num_workers or None
    if cache_dir is None:
        return CacheDataset(list(data), transform=compose, cache_rate=cache_rate, num_workers=workers,
                            progress=progress)
    persistent = _PlainTensorPersistentDataset(list(data), transform=compose, cache_dir=Path(cache_dir),
                                               hash_func=item_hash, hash_transform=transform_hash)
    if cache_rate <= 0 or not _is_deterministic(compose):
        return persistent
    # MONAI annotates `data` as a Sequence; any dataset with __len__ and __getitem__ serves
    return CacheDataset(persistent, transform=Compose([]), cache_rate=cache_rate,  # type: ignore[arg-type]
                        num_workers=workers, progress=progress, copy_cache=False)
