"""``shortcut-kd run BUNDLE STAGE``: run one stage of a shortcut-kd MONAI bundle.

The same as ``python -m monai.bundle run --config_file "['configs/train.json','configs/<stage>.json']"``
with ``bundle_root``, ``dataset_dir`` and ``output_dir`` filled in, so a bundle runs from any folder::

    shortcut-kd run isic2017 train   --dataset-dir /data/ISIC2017
    shortcut-kd run isic2017 teacher --dataset-dir /data/ISIC2017
    shortcut-kd run isic2017 distill --dataset-dir /data/ISIC2017
    shortcut-kd run isic2017 evaluate --dataset-dir /data/ISIC2017
    shortcut-kd run isic2017 inference --dataset-dir /data/new_cases
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any

from shortcut_kd.errors import ConfigError, ShortcutKDError

__all__ = ["BUNDLE_STAGES", "ALIASES", "resolve_bundle", "stage_configs", "bundle_overrides", "config_ids",
           "make_workflow", "toolkit_error", "add_arguments", "run"]

logger = logging.getLogger(__name__)

BASELINE_STAGES = ("randconv", "mixup", "cutmix", "groupdro", "jtt_identify", "jtt", "reweight", "dfr", "finetune")

BUNDLE_STAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("train.json",), "train"),
    "teacher": (("train.json", "teacher.json"), "train"),
    "distill": (("train.json", "distill.json"), "train"),
    "oracle": (("train.json", "oracle.json"), "train"),
    **{name: (("train.json", f"{name}.json"), "train") for name in BASELINE_STAGES},
    "evaluate": (("train.json", "evaluate.json"), "train"),
    "inference": (("inference.json",), "infer"),
}
"""bundle stage -> (config files merged in order, ``ConfigWorkflow`` workflow type). Every stage but
``inference`` merges its file onto ``train.json``; the stage files are shared by every bundle (one source,
``bundles/common/configs/``, linked into each bundle's ``configs/``)."""

ALIASES = {"erm": "train", "kd": "distill", "infer": "inference", "eval": "evaluate"}
"""results.json method keys (and short forms) -> bundle stage."""


TASK_NAMES = {
    "chest_xray_effusion_classification": "chexpert_shortcut_kd",
    "skin_dermoscopy_melanoma_classification": "isic2017_shortcut_kd",
    "brain_mri_simba_classification": "simba_shortcut_kd",
}
"""The bundles under the model zoo's ``<anatomy>_<modality>_<task>`` names (aliases of the folder names)."""


def _bundle_names() -> dict[str, str]:
    from shortcut_kd.data.registry import DATASETS

    return {**{name: entry.bundle for name, entry in DATASETS.items()}, **TASK_NAMES}


def _default_bundles_dir() -> Path:
    """The bundles shipped with the package (in a checkout, ``shortcut_kd/bundles`` links to ``bundles/``)."""
    return Path(__file__).resolve().parents[1] / "bundles"


def resolve_bundle(bundle: str, bundles_dir: str | Path | None = None) -> Path:
    """The bundle folder of ``bundle``: a path to a bundle folder, or a short name (``isic2017``,
    ``chexpert``, ``simba``, or a folder name under ``bundles_dir``)."""
    path = Path(bundle).expanduser()
    if (path / "configs").is_dir():
        return path.resolve()
    root = Path(bundles_dir) if bundles_dir else _default_bundles_dir()
    for candidate in (root / _bundle_names().get(bundle, bundle), root / bundle):
        if (candidate / "configs").is_dir():
            return candidate.resolve()
    raise ConfigError("BUNDLE", bundle, f"give a bundle folder (one with configs/) or one of {sorted(_bundle_names())} "
                                        f"(looked in {root}).")


def stage_configs(bundle_dir: Path, stage: str) -> tuple[list[str], str]:
    """The config files (merged in order) and the workflow type of ``stage``."""
    stage = ALIASES.get(stage, stage)
    if stage not in BUNDLE_STAGES:
        raise ConfigError("STAGE", stage, f"use one of {sorted(BUNDLE_STAGES)} (or {sorted(ALIASES)}).")
    names, workflow_type = BUNDLE_STAGES[stage]
    files = [bundle_dir / "configs" / n for n in names]
    for f in files:
        if not f.is_file():
            raise ConfigError("STAGE", stage, f"the bundle has no {f}; it is not a shortcut-kd bundle.")
    return [str(f) for f in files], workflow_type


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def bundle_overrides(args: argparse.Namespace, bundle_dir: Path, stage: str) -> dict[str, Any]:
    """Config overrides from the command line (``bundle_root``, ``dataset_dir``, ``output_dir``, epochs, --set).

    Every ``--set`` id is checked against the stage's merged config (:func:`config_ids`) before anything runs: it
    must name an existing id, or a new key of an existing dict that something reads (a plain dict, or an argument
    of a component's ``_target_``); a typo is refused naming the nearest ids.

    Args:
        args: the parsed ``shortcut-kd run`` arguments (:func:`add_arguments`).
        bundle_dir: the bundle folder (:func:`resolve_bundle`).
        stage: the bundle stage (or an alias).

    Raises:
        ConfigError: a malformed ``--set`` item, ``--epochs`` for a stage that does not train, or an override id
            the config does not have (named with the nearest ids).
    """
    bundle_root = Path(args.bundle_root).resolve() if args.bundle_root else bundle_dir
    overrides: dict[str, Any] = {"bundle_root": str(bundle_root)}
    if args.dataset_dir:
        overrides["dataset_dir"] = str(Path(args.dataset_dir).resolve())
    if args.output_dir:
        overrides["output_dir"] = str(Path(args.output_dir).resolve())
    if args.epochs is not None:
        if ALIASES.get(stage, stage) in ("inference", "evaluate"):
            raise ConfigError("--epochs", args.epochs, f"the '{stage}' stage does not train; leave --epochs out.")
        overrides["train#trainer#max_epochs"] = int(args.epochs)
    merged = None
    for item in args.set:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", item, "write KEY=VALUE, e.g. --set shortcut#p_bias_pos=0.9")
        value = _parse_value(raw)
        if merged is None:  # the stage's config, read before anything runs
            merged = _merged_config(args, bundle_dir, stage)
        _check_override_id(key, value, config_ids(merged.get()), stage)
        merged[key] = copy.deepcopy(value)  # a later --set may name what this one adds (a new _target_'s arguments)
        overrides[key] = value
    return overrides


_SPECIAL_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
"""Keys MONAI reads inside a component dict (``monai.bundle.config_item.ConfigComponent``)."""


def config_ids(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every id of a (merged) bundle config: ``#``-joined dict keys and list indices -> the value there.

    Args:
        config: the config content (``ConfigParser.get()``).
        prefix: the id of ``config`` itself (``""``: the root, left out of the result).

    Returns:
        ``{id: value}`` for every nested dict entry and list item, e.g. ``train#trainer#max_epochs``,
        ``train#handlers#0``.
    """
    ids: dict[str, Any] = {}
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        child = f"{prefix}#{key}" if prefix else str(key)
        ids[child] = value
        ids.update(config_ids(value, child))
    return ids


def _merged_config(args: argparse.Namespace, bundle_dir: Path, stage: str) -> Any:
    """A ``ConfigParser`` of the config :func:`make_workflow` builds for ``stage`` before overrides: its files
    merged, the metadata under ``_meta_`` and the top-level ids a ``--tracking`` setting adds."""
    from monai.bundle import ConfigParser

    files, _ = stage_configs(bundle_dir, stage)
    if getattr(args, "multi_gpu", False):
        files.append(str(bundle_dir / "configs" / "multi_gpu_train.json"))
    parser = ConfigParser()
    parser.read_config(f=files)
    meta = bundle_dir / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(f=str(meta))
    tracking = getattr(args, "tracking", None)
    if tracking:
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        config = parser.get()
        try:
            settings: Any = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) or ConfigParser.load_config_files(tracking)
            for key, value in dict(settings.get("configs", {})).items():
                config.setdefault(key, value)
            config.setdefault("save_execute_config", True)
        except Exception:  # an unreadable tracking file fails with MONAI's own error when the workflow is built
            pass
    return parser


def _target_parameters(component: dict) -> set[str] | None:
    """The keyword arguments the ``_target_`` of a component dict accepts; None when it takes ``**kwargs`` or
    cannot be resolved here (an expression, an import that fails): then any key may be right."""
    import inspect
    import warnings

    from monai.bundle.config_item import ComponentLocator, ConfigComponent
    from monai.utils.module import locate

    if not isinstance(component.get("_target_"), str) or component["_target_"].startswith(("$", "@", "%")):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            name = ConfigComponent(config=component, locator=ComponentLocator()).resolve_module_name()
            target: Any = locate(name) if isinstance(name, str) else name
            parameters = inspect.signature(target).parameters.values() if target is not None else None
    except Exception:
        return None
    if parameters is None:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _check_override_id(key: str, value: Any, known: dict[str, Any], stage: str) -> None:
    """Refuse an override id that is neither an id of the merged config nor a new key that something reads: a new
    key in a plain (non-component) dict, a special key or an argument of a component's ``_target_``.

    Raises:
        ConfigError: naming the id and the nearest existing ids.
    """
    import difflib

    normal = key.replace("::", "#")
    if normal in known:
        return
    parent, _, child = normal.rpartition("#")
    container = known.get(parent) if parent else None
    candidates = list(known)
    if isinstance(container, dict):
        accepted = _target_parameters(container) if "_target_" in container else None
        if "_target_" not in container or child in _SPECIAL_KEYS or accepted is None or child in accepted:
            return
        candidates += [f"{parent}#{name}" for name in sorted(accepted)]
    near = difflib.get_close_matches(normal, list(dict.fromkeys(candidates)), n=5, cutoff=0.6)
    if isinstance(container, dict) and "_target_" in container:
        what = f"'{parent}' ({container['_target_']}) takes no argument '{child}'"
    elif isinstance(container, list):
        what = f"'{parent}' is a list of {len(container)} items"
    elif parent and parent not in known:
        what = f"the config has no '{parent}'"
    else:
        what = f"the {stage} config has no id '{normal}'"
    hint = f" Did you mean '{near[0]}'? Nearest ids: {near}." if near else \
        " Look the ids up in the bundle's configs/*.json ('#' joins the nested keys)."
    raise ConfigError(key, value, f"{what}: an override must name an existing id, or a new key of an existing "
                                  f"dict that something reads.{hint}")


def make_workflow(bundle: str, stage: str, overrides: dict[str, Any] | None = None, tracking: str | None = None,
                  bundles_dir: str | Path | None = None, multi_gpu: bool = False):
    """A ``monai.bundle.ConfigWorkflow`` for ``stage`` of ``bundle`` (not yet initialised)."""
    from monai.bundle import ConfigWorkflow

    bundle_dir = resolve_bundle(bundle, bundles_dir)
    files, workflow_type = stage_configs(bundle_dir, stage)
    if multi_gpu:
        if workflow_type != "train":
            raise ConfigError("--multi-gpu", stage, "only training stages run under torchrun.")
        files.append(str(bundle_dir / "configs" / "multi_gpu_train.json"))
    overrides = dict(overrides or {})
    overrides.setdefault("bundle_root", str(bundle_dir))
    return ConfigWorkflow(config_file=files, meta_file=str(bundle_dir / "configs" / "metadata.json"),
                          logging_file=str(bundle_dir / "configs" / "logging.conf"), workflow_type=workflow_type,
                          tracking=tracking, **overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder, or isic2017 / chexpert / simba")
    parser.add_argument("stage", help="train (erm), teacher, distill (kd), oracle, a baseline (randconv, mixup, "
                                      "cutmix, groupdro, jtt_identify, jtt, reweight, dfr, finetune), evaluate or "
                                      "inference")
    parser.add_argument("--dataset-dir", help="the dataset in its native layout (inference: the files to predict)")
    parser.add_argument("--output-dir", help="splits, logs, results.json, predictions.csv (default: BUNDLE/eval)")
    parser.add_argument("--epochs", type=int, help="train#trainer#max_epochs")
    parser.add_argument("--bundle-root", help="bundle_root: where models/ is read and written (default: the bundle "
                                              "folder)")
    parser.add_argument("--bundles-dir", help="where short bundle names are looked up (default: the repository's "
                                              "bundles/)")
    parser.add_argument("--tracking", help="experiment tracking: 'mlflow' or a tracking settings file")
    parser.add_argument("--multi-gpu", action="store_true",
                        help="merge configs/multi_gpu_train.json (run under torchrun --nproc_per_node=N)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config key, VALUE as JSON, e.g. --set shortcut#name='\"noise\"' "
                             "--set network_def#widen_factor=0.5")


def run(args: argparse.Namespace) -> int:
    bundle_dir = resolve_bundle(args.bundle, args.bundles_dir)
    overrides = bundle_overrides(args, bundle_dir, args.stage)
    workflow = make_workflow(str(bundle_dir), args.stage, overrides, tracking=args.tracking,
                             multi_gpu=args.multi_gpu)
    try:
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    except Exception as e:
        cause = toolkit_error(e)
        if cause is None:
            raise
        raise cause from e
    return 0


def toolkit_error(error: BaseException) -> ShortcutKDError | None:
    """The toolkit error (bad data or settings) behind a MONAI config error, if there is one.

    MONAI wraps what a ``_target_`` raises in ``RuntimeError("Failed to instantiate component ...")``;
    the command shows the toolkit's own message (file, field and fix) instead of that traceback.
    """
    from shortcut_kd.errors import find_toolkit_error

    return find_toolkit_error(error)
