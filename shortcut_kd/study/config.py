"""A study's YAML file (``configs/studies/*.yaml``): what is run, on what, how it is tuned.

::

    name: isic2017_demo
    pipelines:                       # one entry per dataset pipeline
      - dataset: isic2017
        preset: demo_isic2017        # configs/protocols/<preset>.yaml: the base settings
        synthetic_n: 2000            # generate data as the demo does (or give dataset_dir / ood_dir)
        shortcuts: [patch, noise]
        settings: {val_annotated_size: 100}
    methods: [erm, groupdro, teacher, finetune, kd, oracle]
    variants:                        # a method with other settings, reported as its own row
      kd_from_teacher: {method: kd, settings: {distill: {student_init: teacher}}}
      teacher_n50:                   # methods rerun with experiment-wide settings: one point of an ablation
        methods: [teacher, kd]
        experiment: {specialist_size: 50}
        ablation: teacher_size
        value: 50
    ablations:                       # how each ablation is reported (a table and a figure per ablation)
      teacher_size: {title: Teacher-set size, axis: specialist images, main: 200, numeric: true}
    seeds: [0, 1, 2]                 # the reported seeds
    tuning:
      seeds: [100]                   # never reported
      trials: 4                      # per method, the same for every method; trial 0 = the defaults
      sampler_seed: 0
      search_space:                  # per method: setting -> distribution
        erm: {lr: {float: [3.0e-4, 3.0e-3], log: true}}
        kd: {distill.weight: {choices: [5.0, 20.0, 50.0]}}

A variant runs in its own folder, first seeded with the cell's finished stages, so a stage whose settings it
does not change (ERM for a new teacher, the teacher for a new KD) is reused by its fingerprint, not rerun.
``settings`` apply to the variant's methods only; ``experiment`` to the whole experiment (the data, the
splits, the teacher's network), so every stage that depends on them reruns. ``tuning: {reuse: FOLDER}``
takes the settings another study chose (``FOLDER/tune/<dataset>/<shortcut>/chosen.json``) instead of tuning.

A distribution is ``{float: [low, high], log: bool}``, ``{int: [low, high]}`` or ``{choices: [...]}``;
a setting is an :class:`~shortcut_kd.workflows.settings.ExperimentSettings` key, dotted for ``distill.*``
and ``baselines.*``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shortcut_kd.errors import ConfigError
from shortcut_kd.workflows.settings import nested_settings as nested

__all__ = ["Pipeline", "StudyConfig", "read_study", "nested"]

TOP_KEYS = ("name", "output_dir", "pipelines", "methods", "variants", "ablations", "seeds", "tuning", "device")
PIPELINE_KEYS = ("dataset", "preset", "synthetic_n", "dataset_dir", "ood_dir", "shortcuts", "settings")
TUNING_KEYS = ("seeds", "trials", "sampler_seed", "search_space", "reuse")
VARIANT_KEYS = ("method", "methods", "settings", "experiment", "ablation", "value")
ABLATION_KEYS = ("title", "axis", "main", "numeric")


def _check_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(f"{where}{key}", data[key], f"{hint}known keys are {list(allowed)}.")


@dataclass
class Pipeline:
    """One dataset pipeline of a study."""

    dataset: str
    preset: str | None = None
    synthetic_n: int | None = None
    dataset_dir: str | None = None
    ood_dir: str | None = None
    shortcuts: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


@dataclass
class StudyConfig:
    """A parsed, checked study file (see the module docstring)."""

    name: str
    pipelines: list[Pipeline]
    methods: list[str]
    seeds: list[int]
    tuning_seeds: list[int]
    trials: int
    sampler_seed: int
    search_space: dict[str, dict[str, dict]]
    variants: dict[str, dict] = field(default_factory=dict)
    ablations: dict[str, dict] = field(default_factory=dict)
    reuse_tuning: str | None = None
    output_dir: str | None = None
    device: str | None = None
    source: str | None = None

    def cells(self) -> list[tuple[str, str]]:
        """The (dataset, shortcut) pairs of the study."""
        return [(p.dataset, s) for p in self.pipelines for s in p.shortcuts]

    def variant_methods(self, name: str) -> list[str]:
        """The methods variant ``name`` runs (``method`` or ``methods``)."""
        spec = self.variants[name]
        return list(spec.get("methods") or [spec["method"]])

    def pipeline(self, dataset: str) -> Pipeline:
        return next(p for p in self.pipelines if p.dataset == dataset)

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def _check_space(space: Any, methods: list[str], source: str) -> dict:
    from shortcut_kd.study.tuning import distribution
    from shortcut_kd.workflows.settings import SHARED_KEYS, from_dict

    if not isinstance(space, dict):
        raise ConfigError("tuning.search_space", space, "map method names to {setting: distribution}.")
    for method, params in space.items():
        if method not in methods:
            raise ConfigError(f"tuning.search_space.{method}", params, f"tune methods of the study: {methods}.")
        if not isinstance(params, dict):
            raise ConfigError(f"tuning.search_space.{method}", params, "map settings to distributions.")
        for key, spec in params.items():
            where = f"tuning.search_space.{method}.{key}"
            if key.partition(".")[0] in SHARED_KEYS:
                raise ConfigError(where, spec, "a setting every stage shares cannot be tuned per method.")
            distribution(spec, where)
            try:
                from_dict(nested({key: None}))
            except ConfigError as e:
                raise ConfigError(where, spec, f"not a setting ({e}).") from None
    return space


def _check_variant(name: str, spec: Any, methods: list[str], ablations: dict) -> None:
    """A variant names study methods, per-method ``settings`` and experiment-wide ``experiment`` settings."""
    from shortcut_kd.evaluation.schema import METHOD_ORDER
    from shortcut_kd.workflows.settings import SHARED_KEYS, from_dict

    where = f"variants.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(where, spec, f"give a mapping with keys {list(VARIANT_KEYS)}.")
    _check_keys(spec, VARIANT_KEYS, where + ".")
    if name in METHOD_ORDER:
        raise ConfigError(where, spec, "give the variant a name that is not a method.")
    listed = spec.get("methods") or ([spec["method"]] if spec.get("method") else [])
    if not listed or any(m not in methods for m in listed) or ("method" in spec and "methods" in spec):
        raise ConfigError(f"{where}.method", spec.get("methods", spec.get("method")),
                          f"give method (one) or methods (a list) of the study: {methods}.")
    settings, experiment = spec.get("settings") or {}, spec.get("experiment") or {}
    for key, value in (("settings", settings), ("experiment", experiment)):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{key}", value, "give a mapping of settings.")
    shared = sorted(set(settings) & set(SHARED_KEYS))
    if shared:
        raise ConfigError(f"{where}.settings.{shared[0]}", settings[shared[0]],
                          "every stage shares this setting: put it under experiment.")
    per_method = sorted(set(experiment) - set(SHARED_KEYS))
    if per_method:
        raise ConfigError(f"{where}.experiment.{per_method[0]}", experiment[per_method[0]],
                          "not an experiment-wide setting: put it under settings.")
    try:
        from_dict({**experiment, "per_method": {m: settings for m in listed} if settings else {}})
    except ConfigError as e:
        raise ConfigError(where, spec, f"not valid settings ({e}).") from None
    if spec.get("ablation") is not None and spec["ablation"] not in ablations:
        raise ConfigError(f"{where}.ablation", spec["ablation"], f"declare it under ablations: {sorted(ablations)}.")


def read_study(path: str | Path) -> StudyConfig:
    """Read and check a study file; every error names the key and what is allowed."""
    from shortcut_kd.data.registry import DATASETS
    from shortcut_kd.evaluation.schema import METHOD_ORDER

    path = Path(path)
    if not path.is_file():
        raise ConfigError("study file", str(path), "give the path of a YAML file (see configs/studies/).")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("study file", str(path), "write a YAML mapping (see configs/studies/).")
    _check_keys(data, TOP_KEYS, "")
    pipelines = []
    for i, raw in enumerate(data.get("pipelines") or []):
        _check_keys(raw, PIPELINE_KEYS, f"pipelines[{i}].")
        if raw.get("dataset") not in DATASETS:
            raise ConfigError(f"pipelines[{i}].dataset", raw.get("dataset"), f"use one of {sorted(DATASETS)}.")
        if not raw.get("shortcuts"):
            raise ConfigError(f"pipelines[{i}].shortcuts", raw.get("shortcuts"), "list one or more shortcuts.")
        if not raw.get("dataset_dir") and not raw.get("synthetic_n"):
            raise ConfigError(f"pipelines[{i}].dataset_dir", None,
                              "give dataset_dir, or synthetic_n to generate data.")
        pipelines.append(Pipeline(**raw))
    if not pipelines:
        raise ConfigError("pipelines", data.get("pipelines"), "list one or more pipelines.")
    methods = list(data.get("methods") or [])
    for m in methods:
        if m not in METHOD_ORDER:
            near = difflib.get_close_matches(str(m), METHOD_ORDER, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError("methods", m, hint + f"use {list(METHOD_ORDER)}.")
    if not methods:
        raise ConfigError("methods", methods, f"list methods of {list(METHOD_ORDER)}.")
    seeds = data.get("seeds") or []
    tuning = data.get("tuning") or {}
    _check_keys(tuning, TUNING_KEYS, "tuning.")
    tuning_seeds = tuning.get("seeds") or []
    for key, values in (("seeds", seeds), ("tuning.seeds", tuning_seeds)):
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(key, values, "list one or more integer seeds.")
    overlap = sorted(set(seeds) & set(tuning_seeds))
    if overlap:
        raise ConfigError("tuning.seeds", tuning_seeds,
                          f"tuning seeds are never reported: drop {overlap} from one list.")
    trials = tuning.get("trials", 1)
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError("tuning.trials", trials, "a positive integer (the same budget for every method).")
    variants = data.get("variants") or {}
    ablations = data.get("ablations") or {}
    for name, spec in variants.items():
        _check_variant(name, spec, methods, ablations)
    for name, spec in ablations.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"ablations.{name}", spec, f"give a mapping with keys {list(ABLATION_KEYS)}.")
        _check_keys(spec, ABLATION_KEYS, f"ablations.{name}.")
    reuse = tuning.get("reuse")
    if reuse is not None and not (Path(reuse) / "tune").is_dir():
        raise ConfigError("tuning.reuse", reuse, "give the folder of a study whose tune/ holds chosen.json files.")
    return StudyConfig(name=str(data.get("name") or path.stem), pipelines=pipelines, methods=methods, seeds=seeds,
                       tuning_seeds=tuning_seeds, trials=trials, sampler_seed=int(tuning.get("sampler_seed", 0)),
                       search_space=_check_space(tuning.get("search_space") or {}, methods, str(path)),
                       variants=variants, ablations=ablations, reuse_tuning=reuse, output_dir=data.get("output_dir"),
                       device=data.get("device"),
                       source=str(path))
