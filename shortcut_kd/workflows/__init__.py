"""The multi-stage protocol (ERM -> teacher -> KD -> oracle, plus baselines) run through the MONAI bundles,
the demo, and the bundle command line."""

from shortcut_kd.workflows.experiment import STAGE_METHODS, Experiment
from shortcut_kd.workflows.protocol import collect_results, run_protocol
from shortcut_kd.workflows.runner import run_stage
from shortcut_kd.workflows.settings import (
    BaselineSettings, DistillSettings, ExperimentSettings, from_dict, read_settings,
)

__all__ = ["Experiment", "ExperimentSettings", "DistillSettings", "BaselineSettings", "STAGE_METHODS",
           "collect_results", "from_dict", "read_settings", "run_protocol", "run_stage"]
