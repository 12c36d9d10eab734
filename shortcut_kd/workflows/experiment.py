"""One experiment on disk, seen through its dataset's MONAI bundle.

Every stage of an experiment is a config of the bundle (``train.json`` + the stage's file) with the
experiment's settings as overrides; this class builds those overrides, parses the configs, and reads
paths, networks and preprocessing from them, so nothing here restates a recipe. Layout under
``output_dir`` (the bundle's own layout)::

    splits/                    datalists of every role + splits.json (seed, settings, counts)
    models/model.pt            the distilled student (the deployable model)
    models/model_<method>.pt   every other stage's model; teacher_probes.pt; <stage>_last.pt (resume)
    cache/                     the preprocessing cache shared by every stage
    tensorboard/<stage>/       training curves
    stages/<method>.json       what ran: fingerprint, overrides, hashes, environment, test metrics
    results.json               every finished method (schema shortcut-kd/results/v1)
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import torch

from shortcut_kd.errors import ConfigError
from shortcut_kd.evaluation.schema import METHOD_ORDER
from shortcut_kd.workflows.settings import ExperimentSettings

logger = logging.getLogger(__name__)

__all__ = ["Experiment", "STAGE_METHODS"]

STAGE_METHODS = (*METHOD_ORDER, "jtt_identify")
"""Every stage the protocol runs: the results.json methods and JTT's identification run."""
TEACHER_READERS = ("teacher", "distill", "evaluate")
"""The bundle stages that build the teacher's network (``teacher_def``)."""


def _lookup(config: Any, config_id: str) -> tuple[bool, Any]:
    node = config
    for part in config_id.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


class Experiment:
    """Paths, overrides, parsed configs and loaders shared by every stage of one experiment."""

    def __init__(self, settings: ExperimentSettings, with_code: bool = False) -> None:
        from shortcut_kd.data.registry import get_dataset
        from shortcut_kd.workflows.bundle_cli import resolve_bundle

        self.settings = settings
        self.entry = get_dataset(settings.dataset)
        self.bundle_dir = resolve_bundle(self.entry.bundle)
        self.with_code = with_code
        self.auto_layers: list[str] | None = None
        self._parsers: dict[tuple, Any] = {}
        if settings.shortcut == "native" and not self.entry.native_bias:
            raise ConfigError("shortcut", "native", f"{settings.dataset} carries no bias of its own; "
                              "choose an injected shortcut preset such as patch or noise.")

    # ---- stages and configs ------------------------------------------------------------
    def check_method(self, method: str) -> None:
        if method not in STAGE_METHODS:
            raise ConfigError("stage", method, f"use one of {list(STAGE_METHODS)}.")

    @staticmethod
    def bundle_stage(method: str) -> str:
        """The bundle stage of a method key (``erm`` -> ``train``, ``kd`` -> ``distill``)."""
        from shortcut_kd.workflows.bundle_cli import ALIASES

        return ALIASES.get(method, method)

    def config_files(self, method: str) -> list[str]:
        from shortcut_kd.workflows.bundle_cli import stage_configs

        return stage_configs(self.bundle_dir, self.bundle_stage(method))[0]

    def raw_config(self, method: str) -> dict:
        """The merged config of ``method`` before overrides."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(self.config_files(method))
        return parser.get()

    def overrides(self, method: str) -> dict[str, Any]:
        """The settings as config overrides of ``method``: only ids whose parent exists in its merged config
        (a stage never receives, nor is fingerprinted by, a setting it does not read)."""
        raw = self.raw_config(method)
        out: dict[str, Any] = {"bundle_root": str(self.bundle_dir)}
        for config_id, value in self._candidate_overrides(method, raw).items():
            parent = config_id.rpartition("#")[0]
            if _lookup(raw, config_id)[0] or (parent and isinstance(_lookup(raw, parent)[1], dict)):
                out[config_id] = value
        return out

    def _candidate_overrides(self, method: str, raw: dict) -> dict[str, Any]:
        s = self.settings.for_method(method)
        d, b = s.distill, s.baselines
        stage = self.bundle_stage(method)
        o: dict[str, Any] = {"dataset_dir": str(Path(s.dataset_dir).resolve()),
                             "output_dir": str(Path(s.output_dir).resolve()), "seed": s.seed}
        direct = {"image_size": s.image_size, "batch_size": s.batch_size, "num_workers": s.num_workers,
                  "val_interval": s.val_interval, "amp": s.amp, "optimizer#weight_decay": s.weight_decay,
                  "shortcut#name": s.shortcut, "shortcut#overrides": s.shortcut_overrides,
                  "shortcut#p_bias_pos": s.p_bias_pos, "shortcut#p_bias_neg": s.p_bias_neg,
                  "splits#specialist_size": s.specialist_size,
                  "splits#specialist_source": s.specialist_source, "splits#val_fraction": s.val_fraction,
                  "splits#test_fraction": s.test_fraction, "splits#bias_free": s.bias_free,
                  "splits#val_annotated_size": s.val_annotated_size,
                  "splits#ood_dir": str(Path(s.ood_dir).resolve()) if s.ood_dir else None,
                  "network_def#name": s.architecture, "evaluate#n_bootstrap": s.n_bootstrap,
                  "teacher#probe_epochs": d.probe_epochs, "groupdro#eta": b.groupdro_eta,
                  "jtt#lambda": b.jtt_lambda, "mix#alpha": b.mix_alpha,
                  "randconv#kernel_sizes": b.randconv_kernel_sizes}
        for key in ("loss", "weight", "final_weight", "temperature", "rampup_epochs", "cache_teacher", "mix",
                    "mix_alpha"):
            direct[f"distill#{key}"] = getattr(d, key)
        direct["distill#layers"] = self.auto_layers if d.layers == "auto" else d.layers
        o.update({k: v for k, v in direct.items() if v is not None})
        if s.device:
            o["device"] = f"$torch.device('{s.device}')"
        image_size = s.image_size or raw.get("image_size", 224)
        arch = s.architecture or _lookup(raw, "network_def#name")[1]
        for key, value in {**small_image_kwargs(str(arch), int(image_size)), **s.arch_kwargs}.items():
            o[f"network_def#{key}"] = value
        teacher = teacher_network_kwargs(s, str(arch), int(image_size))
        if teacher is not None and stage in TEACHER_READERS:  # the other stages' fingerprints stay the same
            o["teacher_def"] = {"_target_": "shortcut_kd.nets.build_network", "spatial_dims": "@spatial_dims",
                                "in_channels": "@in_channels", "num_classes": 2, **teacher}
        # the specialist-set stages (teacher, ERM fine-tuned on the specialist subset) share one budget
        epochs = {"teacher": s.teacher_epochs, "finetune": s.teacher_epochs,
                  "jtt_identify": b.jtt_epochs}.get(stage, s.epochs)
        if epochs is not None:
            o["train#trainer#max_epochs"] = epochs
        lr = {"teacher": s.teacher_lr, "finetune": s.teacher_lr, "distill": d.lr or s.lr}.get(stage, s.lr)
        if lr is not None:
            o["optimizer#lr"] = lr
        if s.teacher_init == "scratch":
            o["teacher#init_ckpt"] = None
        elif s.teacher_init not in (None, "erm"):
            o["teacher#init_ckpt"] = str(Path(s.teacher_init).resolve())
            o["teacher#reset_head"] = False
        if d.student_init == "scratch":
            o["distill#student_init"] = None
        elif d.student_init == "erm":
            o["distill#student_init"] = "$@ckpt_dir + '/model_erm.pt'"
        elif d.student_init == "teacher":
            o["distill#student_init"] = "$@ckpt_dir + '/model_teacher.pt'"
        if b.jtt_budget == "upsampled" and stage == "jtt":
            o["train#dataloader#sampler"] = None
            o["train#dataloader#shuffle"] = True
        return o

    def parser(self, method: str):
        """A ``ConfigParser`` of ``method``'s merged config with the overrides applied (cached)."""
        from monai.bundle import ConfigParser

        overrides = self.overrides(method)
        key = (method, repr(sorted(overrides.items(), key=lambda kv: kv[0])))
        if key not in self._parsers:
            parser = ConfigParser()
            parser.read_config(self.config_files(method))
            parser.update(overrides)
            self._parsers[key] = parser
        return self._parsers[key]

    def parsed(self, method: str, config_id: str, fresh: bool = False) -> Any:
        """The parsed (instantiated) ``config_id`` of ``method``'s config; ``fresh`` builds a new object."""
        parser = self.parser(method)
        if fresh:
            return parser.get_parsed_content(config_id, lazy=False)
        return parser.get_parsed_content(config_id)

    # ---- paths -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.settings.output_dir)

    @property
    def split_dir(self) -> Path:
        return self.root / "splits"

    @cached_property
    def ckpt_dir(self) -> Path:
        return Path(self.parsed("erm", "ckpt_dir"))

    def model_path(self, method: str) -> Path:
        return self.ckpt_dir / self.parser(method)["ckpt_name"]

    def last_state_path(self, method: str) -> Path:
        return self.ckpt_dir / f"{self.parser(method)['stage']}_last.pt"

    def outputs(self, method: str) -> list[Path]:
        """The files ``method`` writes for the stages after it (its model; the teacher's probes)."""
        paths = [self.model_path(method)]
        if method == "teacher":
            paths.append(Path(self.parsed("teacher", "teacher#probes_file")))
        return paths

    def record_path(self, method: str) -> Path:
        return self.root / "stages" / f"{method}.json"

    def methods_before(self, method: str) -> list[str]:
        return [m for m in STAGE_METHODS if m != method]

    def is_training(self, method: str) -> bool:
        return method != "dfr"

    @property
    def evaluated_methods(self) -> tuple[str, ...]:
        return METHOD_ORDER

    def is_done(self, method: str) -> bool:
        """A run of ``method`` is recorded (its record and model exist)."""
        return self.record_path(method).is_file() and self.model_path(method).is_file()

    # ---- data --------------------------------------------------------------------------
    @cached_property
    def device(self) -> torch.device:
        return torch.device(self.parsed("erm", "device"))

    @cached_property
    def spatial_dims(self) -> int:
        return int(self.parser("erm")["spatial_dims"])

    @property
    def architecture(self) -> str:
        return str(self.parser("erm")["network_def"]["name"])

    @property
    def native_bias(self) -> bool:
        return self.parser("erm")["shortcut"]["name"] == "native"

    @property
    def shortcut_name(self) -> str:
        return str(self.parser("erm")["shortcut"]["name"])

    def prepare_splits(self) -> Path:
        """Read the native dataset, check its images, build and write the splits (the bundle's ``splits``)."""
        return Path(self.parsed("erm", "splits"))

    def shortcut(self):
        """The shortcut transform of this experiment (None for native-bias data)."""
        return self.parsed("erm", "shortcut#transform")

    def transforms(self):
        """The deterministic preprocessing of the bundle (``validate#preprocessing``)."""
        return self.parsed("erm", "validate#preprocessing")

    def datalist(self, role: str) -> list[dict]:
        from shortcut_kd.data.splits import load_split

        return load_split(self.split_dir, role)

    def loader(self, role_or_items: str | Sequence[dict]):
        """A MONAI DataLoader (no shuffling) over a role or a datalist, through the shared cache."""
        from monai.data import DataLoader

        from shortcut_kd.data.cache import cached_dataset

        items = self.datalist(role_or_items) if isinstance(role_or_items, str) else list(role_or_items)
        dataset = cached_dataset(items, self.transforms(), cache_dir=self.parsed("erm", "cache_dir"))
        return DataLoader(dataset, batch_size=int(self.parser("erm")["batch_size"]), shuffle=False)

    # ---- networks ----------------------------------------------------------------------
    def network(self, method: str = "erm") -> torch.nn.Module:
        """A new, untrained network of ``method``'s architecture."""
        if method == "teacher":
            return self.parsed("teacher", "teacher_def", fresh=True)
        return self.parsed("erm", "network_def", fresh=True)

    def load_model(self, method: str) -> torch.nn.Module:
        """The trained network of ``method`` (eval mode, frozen, on the experiment's device)."""
        from shortcut_kd.nets.checkpoint import load_weights

        return load_weights(self.network(method), self.model_path(method), device=self.device, frozen=True,
                            written_by=f"the '{method}' stage").eval()


def teacher_network_kwargs(settings: ExperimentSettings, architecture: str, image_size: int) -> dict | None:
    """The teacher's ``build_network`` arguments when it differs from the student (another architecture, or the
    same one with other ``teacher_arch_kwargs``, e.g. a narrower ``widen_factor``); None when it is the student's.

    The same name inherits the student's ``arch_kwargs`` under ``teacher_arch_kwargs``; another name starts from
    its own defaults. A teacher unlike the student cannot start from the student's ERM checkpoint, so the
    initialisation must be said (``teacher_init: scratch`` or a checkpoint of that architecture), and the
    student cannot start from the teacher's weights: both are errors, never a silent start from scratch.

    Raises:
        ConfigError: such a teacher with ``teacher_init`` ``erm`` (the default), or with
            ``distill.student_init: teacher``.
    """
    s = settings
    if not s.teacher_architecture and not s.teacher_arch_kwargs:
        return None
    name = s.teacher_architecture or architecture
    student = {"name": architecture, **small_image_kwargs(architecture, image_size), **s.arch_kwargs}
    inherited = s.arch_kwargs if name == architecture else {}
    teacher = {"name": name, **small_image_kwargs(name, image_size), **inherited, **s.teacher_arch_kwargs}
    if teacher == student:
        return None
    if s.teacher_init in (None, "erm"):
        raise ConfigError("teacher_init", s.teacher_init or "erm",
                          f"the teacher ({teacher}) is not the student's network ({student}), so it cannot be "
                          "fine-tuned from the student's ERM checkpoint: set teacher_init: scratch (give the "
                          "teacher it is compared with the same rule) or the path of a checkpoint of that network.")
    if s.distill.student_init == "teacher":
        raise ConfigError("distill.student_init", "teacher",
                          f"the student ({student}) cannot start from the weights of another network ({teacher}); "
                          "use scratch or erm.")
    return teacher


def small_image_kwargs(architecture: str, image_size: int) -> dict:
    """Stem settings for small inputs.

    Below 96 px a ResNet's 7x7 stride-2 stem followed by max-pooling leaves the deeper taps with 1-2 pixels,
    so a 3x3 stride-2 stem without max-pooling is used instead (the cost stays that of the stride-2 stem).
    Explicit ``arch_kwargs`` always win.
    """
    if architecture.startswith("resnet") and image_size < 96:
        return {"conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True}
    return {}
