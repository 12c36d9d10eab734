"""Evaluation: metrics per test set, per-layer shortcut probes, Grad-CAM explanations and the report."""

from shortcut_kd.evaluation.explain import attention_on_mask, gradcam_maps, mid_axial_slice, save_gradcam_panel
from shortcut_kd.evaluation.layer_probes import (
    AUTO_THRESHOLD, choose_taps, extract_features, format_probe_table, plot_layer_probes, pool_features, probe_layers,
    split_by_id, write_probe_table,
)
from shortcut_kd.evaluation.metrics import TEST_ENTRY_KEYS, bootstrap_auc_ci, compute_metrics, evaluate, predict
from shortcut_kd.evaluation.report import experiment_title, format_table, plot_auc_bars, save_figure, write_report
from shortcut_kd.evaluation.schema import (
    METHOD_ORDER, REFERENCE_METHODS, SCHEMA, SET_SCHEMA, TEST_SETS, experiments_of, merge_results, order_methods,
    order_test_sets, validate_results,
)

__all__ = [
    "predict", "compute_metrics", "bootstrap_auc_ci", "evaluate", "TEST_ENTRY_KEYS",
    "probe_layers", "extract_features", "pool_features", "choose_taps", "split_by_id", "plot_layer_probes",
    "format_probe_table", "write_probe_table", "AUTO_THRESHOLD",
    "gradcam_maps", "attention_on_mask", "mid_axial_slice", "save_gradcam_panel",
    "write_report", "format_table", "plot_auc_bars", "save_figure", "experiment_title",
    "validate_results", "merge_results", "experiments_of", "order_methods", "order_test_sets",
    "SCHEMA", "SET_SCHEMA", "METHOD_ORDER", "TEST_SETS", "REFERENCE_METHODS",
]
