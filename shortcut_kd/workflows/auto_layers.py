"""``layers: auto``: distil the taps where the ERM model encodes the shortcut."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shortcut_kd.io import read_json, write_json

if TYPE_CHECKING:
    from shortcut_kd.workflows.experiment import Experiment


def auto_layers(exp: "Experiment") -> list[str]:
    """Taps chosen from a per-layer bias probe of the ERM model (cached in stages/erm/layer_probes.json)."""
    from shortcut_kd.evaluation.layer_probes import choose_taps, probe_layers
    from shortcut_kd.nets import get_taps

    cache = exp.stage_dir("erm") / "layer_probes.json"
    if cache.is_file():
        rows = read_json(cache)
    else:
        model = exp.load_model("erm")
        items = exp.datalist("specialist")  # bias-free training data, never the test sets
        half = len(items) // 2
        rows = probe_layers(model, get_taps(model), exp.loader(items[:half]), exp.loader(items[half:]),
                            targets=("bias", "label"), device=exp.device)
        write_json(cache, rows)
    return choose_taps(rows)
