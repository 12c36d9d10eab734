"""The multi-stage protocol (ERM -> teacher -> KD -> oracle, plus baselines), the demo and bundle running."""

from shortcut_kd.workflows.experiment import TEST_ROLES, Experiment
from shortcut_kd.workflows.protocol import collect_results, run_protocol
from shortcut_kd.workflows.settings import (METHODS, BaselineSettings, DistillSettings, ExperimentSettings,
                                            from_dict, load_settings)
from shortcut_kd.workflows.stages import STAGES, run_stage

__all__ = ["Experiment", "ExperimentSettings", "DistillSettings", "BaselineSettings", "METHODS", "STAGES",
           "TEST_ROLES", "collect_results", "from_dict", "load_settings", "run_protocol", "run_stage"]
