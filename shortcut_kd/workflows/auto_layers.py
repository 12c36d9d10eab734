"""``layers: auto``: distil the taps where the ERM model encodes the shortcut."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shortcut_kd.io import read_json, write_json

if TYPE_CHECKING:
    from shortcut_kd.workflows.experiment import Experiment


def auto_layers(exp: "Experiment") -> list[str]:
    """Taps chosen from a per-layer bias probe of the ERM model, on the bias-free specialist data (cached in
    ``stages/erm_layer_probes_<model hash>.json``, so a retrained ERM model is probed again)."""
    from shortcut_kd.evaluation.layer_probes import choose_taps, probe_layers
    from shortcut_kd.nets import get_taps
    from shortcut_kd.provenance import file_sha256

    digest = (file_sha256(exp.model_path("erm")) or "none")[:12]
    cache = exp.root / "stages" / f"erm_layer_probes_{digest}.json"
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
