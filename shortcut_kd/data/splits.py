"""The split builder: from one datalist, the biased training set, the bias-free specialist subset,
the oracle set, the validation set, the bias-annotated validation split and the test family, each
item flagged with ``bias``.

Partition
    Items are grouped by ``group_key`` (the patient; an item without one is its own group) and
    the groups are dealt into five disjoint pools (test, val, specialist, val_annotated, train),
    so no patient is ever in two pools. The deal is stratified by label (by label and bias with a
    native bias) with largest-remainder quotas, so every pool keeps the dataset's class balance,
    and it is fixed by the seed and the group names alone (not by the order of the datalist).
    The ``val_annotated`` pool (``val_annotated_size``) is dealt last, out of what would otherwise
    be training data, so the test, val and specialist pools are those of a build without it (with a
    native bias the specialist and val_annotated pools are drawn from the train pool instead; see below).

The bias-annotated validation split (roles ``val_<name>`` for ``name`` in :data:`VALIDATION_SETS`)
    A small split, disjoint from every other role, with known bias flags, on which a study selects
    models and chooses hyperparameters, so that no setting is ever chosen on a test set. The old
    ``val`` role stays biased like the training set.

Injected bias (``native_bias=False``, the default)
    - ``train_biased``: ``bias = sample_uniform(seed, id, "bias") < p``, with ``p = p_bias_pos``
      for positives and ``p_bias_neg`` for negatives.
    - ``val``: flagged like the training set; in practice a user has no bias-free validation data.
    - ``specialist`` (the teacher's data) and ``oracle`` (the images of ``train_biased`` and of
      ``specialist``: the same data budget as a method that uses both): bias-free.
      ``bias_free="decorrelated"``: the shortcut is on a seeded random half of each class, so it
      carries no information about the label yet the model has seen it; ``"absent"``: on no image.
    - from the test pool: ``test_unbiased`` (shortcut on a random half of each class),
      ``test_aligned`` (bias = label), ``test_conflicting`` (bias = 1 - label), ``test_clean``
      (no shortcut) and, given a shifted source, ``test_ood`` (its items, no shortcut).
    - from the val_annotated pool, like the test pool: ``val_aligned`` (bias = label) and
      ``val_conflicting`` (bias = 1 - label), the same images twice.

Native bias (``native_bias=True``, e.g. SimBA whose images carry a real bias effect)
    The images' own ``bias`` cannot be changed, so every set is a subset chosen by group
    (``group = 2 * label + bias``):

    - ``train_biased`` and ``val``: their pools as they are.
    - ``specialist``: drawn from the non-test, non-val data before the training set is formed:
      ``decorrelated``: the same number of items from each of the four groups (as many as
      ``specialist_size`` allows, and at most half of the rarest group, so the oracle keeps the
      other half); ``absent``: bias-free items only, in the dataset's class proportions (at most
      half of each class's bias-free items). What it takes is not in ``train_biased``; only
      patients whose images all lie in one group are taken, so the group counts are exact.
    - ``val_aligned`` / ``val_conflicting``: the val_annotated pool's items with bias == label /
      bias != label. The pool is drawn, after the specialist, from the rest of the non-test, non-val
      data (what would otherwise be ``train_biased``) as group-balanced as the data allows:
      ``val_annotated_size`` items shared out over the four groups by water-filling (each group
      gets an equal share, a group that cannot fill its share gives the remainder to the others),
      each group giving at most half of what the specialist left of it, so the oracle keeps the
      other half; as for the specialist, only patients whose images all lie in one group are taken.
      Hence both views hold both classes whenever the data has items of all four groups, and the
      split is not in the dataset's class proportions (it is balanced by group).
    - ``oracle``: from ``train_biased``, the largest group-balanced subset (``decorrelated``) or
      all its bias-free items (``absent``), plus the ``specialist`` items; it is smaller than
      ``train_biased``.
    - ``test_aligned`` / ``test_conflicting`` / ``test_clean``: the test pool's items with
      bias == label / bias != label / bias == 0; ``test_unbiased``: its largest group-balanced subset.
    - ``test_ood``: the shifted source's bias-free items.

Teacher data from another source (``specialist_source="ood"``)
    The ``specialist`` role is drawn from the shifted source instead (``specialist_size`` items,
    class-stratified, by patient, flagged bias-free as above; with a native bias, from its bias-free
    items), and ``test_ood`` keeps the rest of that source, so the teacher never sees a test image.
    The in-domain pools are dealt exactly as with ``"train"``, so ``train_biased``, ``oracle``, the
    validation and the test sets are the same images: only the teacher's data changes.

Every item of every role is a copy of the input item with ``bias``, ``group`` and ``role`` set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.io import read_json, write_json
from shortcut_kd.seeding import sample_uniform

logger = logging.getLogger(__name__)

ROLES = ("train_biased", "specialist", "oracle", "val", "val_aligned", "val_conflicting", "test_unbiased",
         "test_aligned", "test_conflicting", "test_clean", "test_ood")
TEST_SETS = ("unbiased", "aligned", "conflicting", "clean", "ood")
"""The test sets every experiment is evaluated on (results.json test keys); each is the split role
``test_<name>``."""
TEST_ROLES = tuple(f"test_{name}" for name in TEST_SETS)
VALIDATION_SETS = ("aligned", "conflicting")
"""The views of the bias-annotated validation split (model selection, hyperparameters); each is the
split role ``val_<name>``."""
VALIDATION_ROLES = tuple(f"val_{name}" for name in VALIDATION_SETS)
SCHEMA = "shortcut-kd/splits/v1"
MANIFEST = "splits.json"
BIAS_FREE = ("decorrelated", "absent")
SPECIALIST_SOURCES = ("train", "ood")
"""Where the specialist (teacher) subset comes from: the training source, or the shifted (OOD) source."""
GROUP_NAMES = {0: "label 0, no shortcut", 1: "label 0, shortcut", 2: "label 1, no shortcut", 3: "label 1, shortcut"}
_CELLS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (label, bias) in group order
_REST = "train"
_SPLITS_COMMAND = "shortcut-kd splits DATASET DATASET_DIR OUT_DIR"


def _round(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even, which surprises in a size)."""
    return int(x + 0.5)


@dataclass
class SplitSettings:
    """How :func:`build_splits` partitions a datalist and flags the shortcut.

    Args:
        seed: fixes the partition and every bias flag.
        p_bias_pos: fraction of positives (label 1) carrying the shortcut in the biased sets.
        p_bias_neg: fraction of negatives carrying it.
        specialist_size: size of the bias-free specialist subset: a fraction of the datalist
            (a float in (0, 1)) or a number of items (an int).
        val_fraction: fraction of the datalist in the validation pool.
        test_fraction: fraction of the datalist in the test pool.
        bias_free: ``"decorrelated"`` (shortcut on a random half of each class) or ``"absent"``
            (on no image): what "bias-free" means for the specialist and oracle sets.
        group_key: item key of the unit kept whole across pools (the patient); ``None``: each item.
        native_bias: keep the items' own ``bias`` (data with a real bias, e.g. SimBA) instead of
            injecting one; see the module docstring.
        val_annotated_size: size of the bias-annotated validation split (roles ``val_aligned`` and
            ``val_conflicting``, for model selection): a fraction of the datalist (a float in (0, 1))
            or a number of items (an int).
        specialist_source: ``"train"`` (the specialist subset from the training source) or ``"ood"``
            (from the shifted source given as ``ood_datalist``; see the module docstring).
    """

    seed: int = 0
    p_bias_pos: float = 0.95
    p_bias_neg: float = 0.05
    specialist_size: float | int = 0.1
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    bias_free: str = "decorrelated"
    group_key: str | None = "patient"
    native_bias: bool = False
    val_annotated_size: float | int = 0.05
    specialist_source: str = "train"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", self.seed, "use an integer.")
        for key in ("p_bias_pos", "p_bias_neg"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(key, value, "use a probability in [0, 1].")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigError(key, value, "use a fraction in (0, 1).")
        total = self.val_fraction + self.test_fraction
        for key in ("specialist_size", "val_annotated_size"):
            size = getattr(self, key)
            if isinstance(size, bool) or not isinstance(size, (int, float)):
                raise ConfigError(key, size, "use a fraction in (0, 1) or a number of items >= 1.")
            if isinstance(size, int) and size < 1 or isinstance(size, float) and not 0.0 < size < 1.0:
                raise ConfigError(key, size, "use a fraction in (0, 1) or a number of items >= 1.")
            total += size if isinstance(size, float) else 0.0
        if total >= 1.0:
            raise ConfigError("val_fraction + test_fraction + specialist_size + val_annotated_size", round(total, 6),
                              "lower them so that their sum is below 1 and some data is left for training.")
        if self.bias_free not in BIAS_FREE:
            raise ConfigError("bias_free", self.bias_free, f"use one of {list(BIAS_FREE)}.")
        if self.group_key is not None and (not isinstance(self.group_key, str) or not self.group_key):
            raise ConfigError("group_key", self.group_key, "use an item key such as 'patient', or None.")
        if not isinstance(self.native_bias, bool):
            raise ConfigError("native_bias", self.native_bias, "use true or false.")
        if self.specialist_source not in SPECIALIST_SOURCES:
            raise ConfigError("specialist_source", self.specialist_source, f"use one of {list(SPECIALIST_SOURCES)}.")

    def pool_sizes(self, n: int) -> dict[str, int]:
        """Target item counts of the test, val, specialist, val_annotated and train pools for ``n`` items.

        Raises:
            ConfigError: a pool would be empty.
        """
        keys = {"test": "test_fraction", "val": "val_fraction", "specialist": "specialist_size",
                "val_annotated": "val_annotated_size"}
        sizes = {}
        for pool, key in keys.items():
            size = getattr(self, key)
            sizes[pool] = size if isinstance(size, int) else _round(size * n)
            if sizes[pool] < 1:
                raise ConfigError(key, size, f"with {n} items this leaves the {pool} pool empty; raise it or use "
                                             "more data.")
        sizes[_REST] = n - sum(sizes.values())
        if sizes[_REST] < 1:
            key = "specialist_size" if sizes["specialist"] >= sizes["val_annotated"] else "val_annotated_size"
            raise ConfigError(key, getattr(self, key),
                              f"with {n} items the test, val, specialist and val_annotated pools ({sizes['test']} + "
                              f"{sizes['val']} + {sizes['specialist']} + {sizes['val_annotated']}) leave nothing "
                              "to train on; lower them.")
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitSettings:
        """Settings from a mapping (e.g. ``splits.json``'s ``settings``), validated."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], f"split settings are {sorted(known)}.")
        settings = cls(**dict(data))
        settings.validate()
        return settings


def group_of(label: int, bias: int) -> int:
    """The group index ``2 * label + bias`` (0: negative without shortcut ... 3: positive with)."""
    return 2 * int(label) + int(bias)


def _tag(item: Mapping[str, Any], bias: int, role: str) -> dict:
    out = dict(item)
    out["bias"] = int(bias)
    out["group"] = group_of(out["label"], bias)
    out["role"] = role
    return out


def _order(items: Sequence[dict], seed: int, salt: str) -> list[dict]:
    """``items`` in a seeded random order that depends on their ids only."""
    return sorted(items, key=lambda it: (sample_uniform(seed, it["id"], salt), it["id"]))


def _validate_items(datalist: Sequence[Mapping[str, Any]], native_bias: bool, what: str) -> list[dict]:
    items, seen = [], set()
    for i, item in enumerate(datalist, start=1):
        if not isinstance(item, Mapping):
            raise DataError(f"{what} item is a {type(item).__name__}, not a dict.", row=i,
                            fix="pass a MONAI datalist (a list of dicts), e.g. from read_dataset().")
        where = {"file": str(item.get("image")) if "image" in item else None, "row": item.get("id", i)}
        for key in ("image", "label", "id"):
            if key not in item:
                raise DataError(f"{what} item has no '{key}'.", column=key, fix="give every item image, label and id.",
                                **where)
        if item["id"] in seen:
            raise DataError(f"id '{item['id']}' occurs twice in the {what}.", column="id",
                            fix="give every item a unique id.", **where)
        seen.add(item["id"])
        keys = ("label", "bias") if native_bias else ("label",)
        for key in keys:
            value = item.get(key)
            if isinstance(value, bool) or value not in (0, 1):
                fix = ("flag every item 0 or 1, or build with native_bias=False to inject a shortcut."
                       if key == "bias" else "use binary labels: 0 or 1.")
                raise DataError(f"{key} {value!r} is not 0 or 1.", column=key, fix=fix, **where)
        items.append({**item, "label": int(item["label"]), **({"bias": int(item["bias"])} if native_bias else {})})
    return items


def _units(items: Sequence[dict], group_key: str | None) -> dict[str, list[dict]]:
    """Items grouped into the units kept whole across pools (a patient; else the item itself)."""
    units: dict[str, list[dict]] = {}
    for item in items:
        value = item.get(group_key) if group_key else None
        key = f"id:{item['id']}" if value is None or str(value).strip() == "" else f"group:{value}"
        units.setdefault(key, []).append(item)
    return units


def _quotas(sizes: Mapping[Hashable, int], targets: Mapping[str, int]) -> dict[Hashable, dict[str, int]]:
    """Per stratum and pool, item quotas whose pool totals are exactly ``targets``, in proportion to
    the strata sizes (largest-remainder rounding, pool by pool, within what each stratum has left).

    sklearn's stratified splitters give two-way splits of items; this deals groups into four pools
    of given sizes, so the few lines are written here.
    """
    n = sum(sizes.values())
    left = dict(sizes)
    quotas: dict[Hashable, dict[str, int]] = {s: {} for s in sizes}
    for pool, target in targets.items():
        raw = {s: target * sizes[s] / n for s in sizes}
        q = {s: min(int(raw[s]), left[s]) for s in sizes}
        rest = target - sum(q.values())
        for s in sorted(sizes, key=lambda s: int(raw[s]) - raw[s]) + list(sizes):  # largest remainder first
            if rest <= 0:
                break
            if q[s] < left[s]:
                q[s] += 1
                rest -= 1
        for s in sizes:
            left[s] -= q[s]
            quotas[s][pool] = q[s]
    return quotas


def _partition(units: Mapping[str, list[dict]], targets: Mapping[str, int], seed: int,
               stratum_of: Callable[[list[dict]], Hashable]) -> dict[str, list[str]]:
    """Deal whole units into the pools of ``targets`` (in order) and the rest into ``train``."""
    strata: dict[Hashable, list[str]] = {}
    for key, members in units.items():
        strata.setdefault(stratum_of(members), []).append(key)
    strata = {s: sorted(keys, key=lambda k: (sample_uniform(seed, k, "partition"), k))
              for s, keys in sorted(strata.items())}
    sizes = {s: sum(len(units[k]) for k in keys) for s, keys in strata.items()}
    quotas = _quotas(sizes, targets)
    pools: dict[str, list[str]] = {p: [] for p in [*targets, _REST]}
    order = list(targets)
    for s, keys in strata.items():
        filled = dict.fromkeys(order, 0)
        current = 0
        for key in keys:
            while current < len(order) and filled[order[current]] >= quotas[s][order[current]]:
                current += 1
            pool = order[current] if current < len(order) else _REST
            pools[pool].append(key)
            if pool != _REST:
                filled[pool] += len(units[key])
    for pool, keys in pools.items():
        if not keys:
            raise DataError(f"the {pool} pool came out empty: the groups (patients) are too few or too large "
                            "for the requested pool sizes.",
                            fix="use more data, change val_fraction / test_fraction / specialist_size / "
                                "val_annotated_size, or split by item (group_key=None).")
    return pools


def _flags_half(items: Sequence[dict], seed: int, salt: str) -> dict[str, int]:
    """Shortcut on a seeded random half of each class (one more or less for an odd count, by a seeded coin)."""
    flags = {}
    for label in (0, 1):
        members = _order([it for it in items if it["label"] == label], seed, salt)
        k = len(members) // 2
        if len(members) % 2 and sample_uniform(seed, f"{salt}|label{label}", "odd") < 0.5:
            k += 1
        flags.update({it["id"]: int(i < k) for i, it in enumerate(members)})
    return flags


def _flags_biased(items: Sequence[dict], settings: SplitSettings) -> dict[str, int]:
    flags = {}
    for it in items:
        p = settings.p_bias_pos if it["label"] == 1 else settings.p_bias_neg
        flags[it["id"]] = int(sample_uniform(settings.seed, it["id"], "bias") < p)
    return flags


def _cell(members: Sequence[dict]) -> tuple[int, int]:
    """(label, bias) of a unit: the largest of its items' (a patient with any positive image is positive)."""
    return max(m["label"] for m in members), max(m["bias"] for m in members)


def _pure_cell(members: Sequence[dict]) -> tuple[int, int] | None:
    """(label, bias) shared by all items of a unit; ``None`` for a unit mixing groups."""
    cells = {(m["label"], m["bias"]) for m in members}
    return cells.pop() if len(cells) == 1 else None


def _pick(units: Sequence[list[dict]], per_cell: Mapping[tuple[int, int], int], seed: int,
          salt: str) -> tuple[list[list[dict]], list[list[dict]]]:
    """Units taken from each (label, bias) cell up to ``per_cell`` items, in a seeded order; and the rest.
    Only units whose items all share one group are taken, so the counts per group are exact."""
    picked, left = [], []
    by_cell: dict[tuple[int, int] | None, list[list[dict]]] = {}
    for unit in units:
        by_cell.setdefault(_pure_cell(unit), []).append(unit)
    left.extend(by_cell.get(None, []))
    for cell in _CELLS:
        count = 0
        for unit in sorted(by_cell.get(cell, []), key=lambda u: (sample_uniform(seed, u[0]["id"], salt), u[0]["id"])):
            if count < per_cell.get(cell, 0):
                picked.append(unit)
                count += len(unit)
            else:
                left.append(unit)
    return picked, left


def _cell_counts(items: Sequence[dict]) -> dict[tuple[int, int], int]:
    counts = dict.fromkeys(_CELLS, 0)
    for it in items:
        counts[(it["label"], it["bias"])] += 1
    return counts


def _balanced(items: Sequence[dict], seed: int, salt: str) -> list[dict]:
    """The largest subset with the same number of items in each of the four groups."""
    m = min(_cell_counts(items).values())
    picked, _ = _pick([[it] for it in items], dict.fromkeys(_CELLS, m), seed, salt)
    return [u[0] for u in picked]


def _native_specialist(units: Sequence[list[dict]], target: int, settings: SplitSettings,
                       class_share: Mapping[int, float]) -> tuple[list[list[dict]], list[list[dict]]]:
    counts = dict.fromkeys(_CELLS, 0)
    for unit in units:
        cell = _pure_cell(unit)
        if cell is not None:
            counts[cell] += len(unit)
    if settings.bias_free == "decorrelated":
        # At most half of the rarest group, so that the oracle (drawn from what is left) keeps some.
        m = min(target // 4, *((k + 1) // 2 for k in counts.values()))
        if m < 1:
            raise DataError(f"no bias-free specialist subset can be drawn: the non-test, non-val data has "
                            f"{ {GROUP_NAMES[group_of(*c)]: counts[c] for c in _CELLS} } items per group (counting "
                            "groups of items, e.g. patients, that lie in one group only) and a decorrelated subset "
                            "needs all four.",
                            fix="use data with some bias-conflicting samples, a larger specialist_size, "
                                "or bias_free='absent'.")
        per_cell = dict.fromkeys(_CELLS, m)
    else:
        per_cell = {(c, 0): min(_round(target * class_share[c]), (counts[(c, 0)] + 1) // 2) for c in (0, 1)}
        if min(per_cell.values()) < 1:
            raise DataError(f"no bias-free specialist subset with both classes: bias-free items per class "
                            f"{ {c: counts[(c, 0)] for c in (0, 1)} }.",
                            fix="use data with bias-free samples of both classes or bias_free='decorrelated'.")
    return _pick(units, per_cell, settings.seed, "specialist")


def _water_fill(target: int, caps: Mapping[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """``target`` items shared out over the cells as evenly as ``caps`` allow: the cells are served from the
    smallest cap up, each given an equal share of what is left (at most its cap), so a cell that cannot fill
    its share leaves the remainder to the larger ones."""
    alloc, left = {}, target
    cells = sorted(caps, key=lambda c: (caps[c], c))
    for i, cell in enumerate(cells):
        alloc[cell] = min(caps[cell], left // (len(cells) - i))
        left -= alloc[cell]
    return alloc


def _native_validation(units: Sequence[list[dict]], target: int,
                       seed: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """The native-bias val_annotated pool drawn from ``units`` (the data the specialist left for training):
    ``target`` items as group-balanced as the data allows, at most half of each group's (pure) items."""
    counts = dict.fromkeys(_CELLS, 0)
    for unit in units:
        cell = _pure_cell(unit)
        if cell is not None:
            counts[cell] += len(unit)
    per_cell = _water_fill(target, {c: counts[c] // 2 for c in _CELLS})
    picked, left = _pick(units, per_cell, seed, "val_annotated")
    if not picked:
        raise DataError(f"no bias-annotated validation split can be drawn: the training data left after the "
                        f"specialist has { {GROUP_NAMES[group_of(*c)]: counts[c] for c in _CELLS} } items per group "
                        "(counting groups of items, e.g. patients, that lie in one group only) and the split takes "
                        "at most half of each.",
                        fix="use more data, a larger val_annotated_size, or a smaller specialist_size.")
    return picked, left


def build_splits(datalist: Sequence[Mapping[str, Any]], settings: SplitSettings | None = None,
                 ood_datalist: Sequence[Mapping[str, Any]] | None = None) -> dict[str, list[dict]]:
    """Build every split role from one datalist (see the module docstring for what each holds).

    Args:
        datalist: items with ``image``, ``label`` (0/1) and a unique ``id``; ``settings.group_key``
            where the data has patients; ``bias`` (0/1) when ``settings.native_bias``.
        settings: the split settings; default :class:`SplitSettings()`.
        ood_datalist: items of a shifted source (other site, scanner, contrast) for ``test_ood``.

    Returns:
        ``{role: items}`` for the roles of :data:`ROLES` (``test_ood`` only with ``ood_datalist``),
        each list sorted by id; every item is a copy with ``bias``, ``group`` and ``role`` set.

    Raises:
        ConfigError: bad settings, or pool sizes that leave a pool empty.
        DataError: an item without image / label / id, a label (or native bias) other than 0/1,
            a repeated id, a single class, or too few groups for the pools (with a native bias: for
            the specialist or the bias-annotated validation split).
    """
    settings = settings if settings is not None else SplitSettings()
    settings.validate()
    native = settings.native_bias
    items = _validate_items(datalist, native, "datalist")
    labels = {it["label"] for it in items}
    if labels != {0, 1}:
        raise DataError(f"the datalist has {len(items)} item(s), with label(s) {sorted(labels)} only.", column="label",
                        fix="the split builder needs positives and negatives; check the label column "
                            "or the reader's label option.")
    sizes = settings.pool_sizes(len(items))
    units = _units(items, settings.group_key)
    seed = settings.seed

    targets = {"test": sizes["test"], "val": sizes["val"]}
    if native:
        pools = _partition(units, targets, seed, _cell)
    else:  # val_annotated last: the test, val and specialist pools are those of a build without it
        targets.update(specialist=sizes["specialist"], val_annotated=sizes["val_annotated"])
        pools = _partition(units, targets, seed, lambda members: max(m["label"] for m in members))

    def flat(pool: str) -> list[dict]:
        return [it for key in pools[pool] for it in units[key]]

    test, val = flat("test"), flat("val")
    roles: dict[str, list[dict]] = {}
    if not native:
        train, specialist, annotated = flat(_REST), flat("specialist"), flat("val_annotated")
        flags = _flags_biased(train + val, settings)
        roles["train_biased"] = [_tag(it, flags[it["id"]], "train_biased") for it in train]
        roles["val"] = [_tag(it, flags[it["id"]], "val") for it in val]
        for role, pool in (("specialist", specialist), ("oracle", train + specialist)):
            free = _flags_half(pool, seed, role) if settings.bias_free == "decorrelated" else {}
            roles[role] = [_tag(it, free.get(it["id"], 0), role) for it in pool]
        half = _flags_half(test, seed, "test_unbiased")
        roles["test_unbiased"] = [_tag(it, half[it["id"]], "test_unbiased") for it in test]
        roles["test_aligned"] = [_tag(it, it["label"], "test_aligned") for it in test]
        roles["test_conflicting"] = [_tag(it, 1 - it["label"], "test_conflicting") for it in test]
        roles["test_clean"] = [_tag(it, 0, "test_clean") for it in test]
        roles["val_aligned"] = [_tag(it, it["label"], "val_aligned") for it in annotated]
        roles["val_conflicting"] = [_tag(it, 1 - it["label"], "val_conflicting") for it in annotated]
    else:
        share = {c: sum(it["label"] == c for it in items) / len(items) for c in (0, 1)}
        spec_units, rest_units = _native_specialist([units[k] for k in pools[_REST]], sizes["specialist"],
                                                    settings, share)
        annotated_units, train_units = _native_validation(rest_units, sizes["val_annotated"], seed)
        annotated = [it for unit in annotated_units for it in unit]
        train = [it for unit in train_units for it in unit]
        if not train:
            raise DataError("the specialist subset took every training item.", fix="lower specialist_size.")
        specialist = [it for unit in spec_units for it in unit]
        oracle = (_balanced(train, seed, "oracle") if settings.bias_free == "decorrelated" else [
            it for it in train if it["bias"] == 0]) + specialist
        for role, pool in (("train_biased", train), ("specialist", specialist), ("oracle", oracle), ("val", val),
                           ("val_aligned", [it for it in annotated if it["bias"] == it["label"]]),
                           ("val_conflicting", [it for it in annotated if it["bias"] != it["label"]]),
                           ("test_aligned", [it for it in test if it["bias"] == it["label"]]),
                           ("test_conflicting", [it for it in test if it["bias"] != it["label"]]),
                           ("test_clean", [it for it in test if it["bias"] == 0]),
                           ("test_unbiased", _balanced(test, seed, "test_unbiased"))):
            roles[role] = [_tag(it, it["bias"], role) for it in pool]
            if not pool:
                logger.warning("split role '%s' is empty: the data has too few items in some (label, bias) group.",
                               role)
    if settings.specialist_source == "ood" and ood_datalist is None:
        raise ConfigError("specialist_source", "ood", "the teacher's data from the shifted source needs that "
                          "source: give ood_dir (the OOD dataset in the same layout), or use 'train'.")
    if ood_datalist is not None:
        ood = _validate_items(ood_datalist, False, "OOD datalist")
        if native:
            carry = [it for it in ood if it.get("bias") in (0, 1)]
            if len(carry) == len(ood):
                ood = [it for it in ood if it["bias"] == 0]
                logger.info("test_ood: kept the %d bias-free item(s) of the OOD source.", len(ood))
        if settings.specialist_source == "ood":
            ood_specialist, ood = _ood_specialist(ood, sizes["specialist"], settings)
            free = _flags_half(ood_specialist, seed, "specialist") if settings.bias_free == "decorrelated" and \
                not native else {}
            roles["specialist"] = [_tag(it, free.get(it["id"], 0), "specialist") for it in ood_specialist]
        roles["test_ood"] = [_tag(it, 0, "test_ood") for it in ood]
    return {role: sorted(roles[role], key=lambda it: str(it["id"])) for role in ROLES if role in roles}


def _ood_specialist(ood: Sequence[dict], target: int, settings: SplitSettings) -> tuple[list[dict], list[dict]]:
    """The specialist subset drawn from the shifted source (class-stratified, by patient) and what is left
    of that source for ``test_ood``."""
    labels = {it["label"] for it in ood}
    if labels != {0, 1} or target >= len(ood):
        raise DataError(f"the shifted source has {len(ood)} usable item(s) with label(s) {sorted(labels)}: it cannot "
                        f"give a specialist subset of {target} with both classes and leave a test_ood set.",
                        fix="use a larger OOD source or a smaller specialist_size, or specialist_source: train.")
    units = _units(ood, settings.group_key)
    pools = _partition(units, {"specialist": target}, settings.seed, lambda members: max(m["label"] for m in members))
    taken = [it for key in pools["specialist"] for it in units[key]]
    rest = [it for key in pools[_REST] for it in units[key]]
    return taken, rest


def split_counts(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``{role: {"n": items, "groups": {"0": n, "1": n, "2": n, "3": n}}}`` (group = 2 * label + bias)."""
    out = {}
    for role, items in splits.items():
        groups = dict.fromkeys(("0", "1", "2", "3"), 0)
        for it in items:
            groups[str(group_of(it["label"], it["bias"]))] += 1
        out[role] = {"n": len(items), "groups": groups}
    return out


def write_splits(splits: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | os.PathLike,
                 settings: SplitSettings, source: Mapping[str, Any] | None = None) -> Path:
    """Write each role as ``<out_dir>/<role>.json`` (a MONAI datalist) and the manifest
    ``<out_dir>/splits.json`` (schema ``shortcut-kd/splits/v1``: settings, seed, counts per role
    and group, source), every file atomically.

    The manifest is removed first and written last, so a folder with a manifest is complete;
    role files of an earlier build that this one lacks (e.g. ``test_ood``) are removed.

    Args:
        splits: the output of :func:`build_splits`.
        out_dir: the split folder.
        settings: the settings that made ``splits``.
        source: what the splits were built from (dataset name, folder, reader options), recorded as is.

    Returns:
        the manifest path.
    """
    unknown = sorted(set(splits) - set(ROLES))
    if unknown:
        raise ConfigError("role", unknown[0], f"use the roles {list(ROLES)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for role in ROLES:
        path = out / f"{role}.json"
        if role in splits:
            write_json(path, [dict(it) for it in splits[role]])
        else:
            path.unlink(missing_ok=True)
    manifest = {
        "schema": SCHEMA,
        "seed": settings.seed,
        "settings": settings.to_dict(),
        "roles": [r for r in ROLES if r in splits],
        "groups": {str(g): name for g, name in GROUP_NAMES.items()},
        "counts": split_counts({r: splits[r] for r in ROLES if r in splits}),
        "source": dict(source) if source is not None else None,
    }
    return write_json(out / MANIFEST, manifest)


def read_manifest(split_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``splits.json`` of a split folder, checked for its schema."""
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        raise DataError("no splits.json: this is not a (complete) split folder.", file=str(path),
                        fix=f"build the splits first: {_SPLITS_COMMAND}.")
    manifest = read_json(path)
    if not isinstance(manifest, Mapping) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, Mapping) else type(manifest).__name__
        raise DataError(f"schema {found!r} is not {SCHEMA!r}.", file=str(path), column="schema",
                        fix=f"rebuild the splits with this version: {_SPLITS_COMMAND}.")
    return dict(manifest)


def load_split(split_dir: str | os.PathLike, role: str) -> list[dict]:
    """The datalist of one role from a split folder written by :func:`write_splits`.

    Raises:
        ConfigError: ``role`` is not one of :data:`ROLES`.
        DataError: the folder has no manifest, or this role was not built (e.g. ``test_ood``
            without an OOD source).
    """
    if role not in ROLES:
        raise ConfigError("role", role, f"use one of {list(ROLES)}.")
    manifest = read_manifest(split_dir)
    path = Path(split_dir) / f"{role}.json"
    if role not in manifest.get("roles", []) or not path.is_file():
        fix = (f"build the splits with a shifted source: {_SPLITS_COMMAND} --ood-dir OOD_DIR." if role == "test_ood"
               else f"rebuild the splits: {_SPLITS_COMMAND}.")
        raise DataError(f"split role '{role}' is not in this split folder (it has {manifest.get('roles', [])}).",
                        file=str(path), fix=fix)
    items = read_json(path)
    if not isinstance(items, list):
        raise DataError(f"expected a list of items, found {type(items).__name__}.", file=str(path),
                        fix=f"rebuild the splits: {_SPLITS_COMMAND}.")
    return items


def load_settings(split_dir: str | os.PathLike) -> SplitSettings:
    """The :class:`SplitSettings` recorded in a split folder's manifest."""
    manifest = read_manifest(split_dir)
    return SplitSettings.from_dict(manifest.get("settings", {}))
