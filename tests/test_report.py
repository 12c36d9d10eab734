"""report.md from a small hand-written results.json; schema validation and merging."""

import copy
import json

import pytest

from shortcut_kd.errors import DataError
from shortcut_kd.evaluation import (
    SET_SCHEMA, format_table, merge_results, order_methods, plot_auc_bars, validate_results, write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _entry(auc, lo, hi, dtpr=None, n=400):
    return {"auc": auc, "auc_ci": [lo, hi], "accuracy": 0.7, "balanced_accuracy": 0.7,
            "tpr_bias": None if dtpr is None else 0.5 + dtpr, "tpr_nobias": None if dtpr is None else 0.5,
            "delta_tpr": dtpr, "worst_group_accuracy": 0.4, "n": n}


def _results(name="patch", kind="localized"):
    return {
        "schema": "shortcut-kd/results/v1", "dataset": "isic2017", "architecture": "resnet18",
        "shortcut": {"name": name, "kind": kind, "p_bias_pos": 0.95, "p_bias_neg": 0.05},
        "seed": 7,
        "methods": {
            "oracle": {"test": {"unbiased": _entry(0.97, 0.95, 0.99, 0.01), "conflicting": _entry(0.98, 0.96, 0.99)}},
            "kd": {"test": {"unbiased": _entry(0.93, 0.90, 0.95, -0.02), "conflicting": _entry(0.91, 0.88, 0.94)}},
            "erm": {"test": {"unbiased": _entry(0.80, 0.76, 0.84, 0.45), "conflicting": _entry(0.61, 0.57, 0.65)}},
            "teacher": {"test": {"unbiased": _entry(0.88, 0.85, 0.91, 0.05), "conflicting": _entry(0.85, 0.81, 0.88)}},
            "groupdro": {"test": {"unbiased": _entry(0.95, 0.93, 0.97, 0.10),
                                  "conflicting": _entry(0.70, 0.66, 0.74)}},
        },
    }


def _row(table, method):
    return next(line for line in table.splitlines() if line.startswith(f"| `{method}`"))


def test_table_marks_best_and_orders_methods():
    table = format_table(_results())
    lines = table.splitlines()
    assert lines[0] == ("| method | unbiased AUC [95 % CI] (n=400) | unbiased ΔTPR | "
                        "conflicting AUC [95 % CI] (n=400) |")
    assert [line.split("`")[1] for line in lines[2:]] == ["erm", "groupdro", "teacher", "kd", "oracle"]
    # conflicting: kd has the best AUC among the methods usable in practice; the oracle is higher but a reference
    assert "**0.910 [0.880, 0.940]**" in _row(table, "kd")
    assert "**" not in _row(table, "oracle")
    # unbiased: groupdro has the best AUC, kd the ΔTPR closest to 0
    assert "**0.950 [0.930, 0.970]**" in _row(table, "groupdro")
    assert "**-0.020**" in _row(table, "kd") and "+0.450" in _row(table, "erm")
    # ΔTPR is undefined on conflicting, so it has no ΔTPR column
    assert "conflicting ΔTPR" not in table
    assert format_table(_results(), test_sets=["conflicting"]).splitlines()[0].count("|") == 3


def test_table_with_missing_and_undefined_values():
    res = _results()
    del res["methods"]["erm"]["test"]["conflicting"]
    res["methods"]["teacher"]["test"]["conflicting"].update(auc=None, auc_ci=None)
    table = format_table(res)
    assert _row(table, "erm").endswith("| – |") and _row(table, "teacher").endswith("| n/a |")


def test_write_report(tmp_path):
    probe = tmp_path / "probes" / "layer_probes.png"
    probe.parent.mkdir()
    probe.write_bytes(PNG)
    res = _results()
    res["attention_on_shortcut"] = {"kd": 0.12, "erm": 0.81}
    path = write_report(res, tmp_path / "out", figures={"Layer probes": probe},
                        settings={"dataset": "isic2017", "epochs": 6, "seed": 7, "taps": ("layer1", "layer2")})
    text = path.read_text()
    assert path.name == "report.md"
    assert "## isic2017 · resnet18 · patch (localized, bias on 95% of positives / 5% of negatives)" in text
    assert format_table(res) in text
    assert "![AUC per method and test set](figures/auc.png)" in text
    assert (tmp_path / "out" / "figures" / "auc.png").read_bytes()[:8] == PNG
    assert "](../probes/layer_probes.png)" in text
    assert "| `erm` | 0.810 |" in text and text.index("| `erm` | 0.810") < text.index("| `kd` | 0.120")
    assert "Seed: `7`" in text and "epochs: 6" in text and "- layer1" in text


def test_report_of_a_results_set(tmp_path):
    both = merge_results(_results("patch"), _results("noise", "diffuse"))
    assert both["schema"] == SET_SCHEMA and len(both["experiments"]) == 2
    text = write_report(both, tmp_path).read_text()
    assert "· patch (localized" in text and "· noise (diffuse" in text
    assert (tmp_path / "figures" / "auc_0_patch.png").is_file() and (tmp_path / "figures" / "auc_1_noise.png").is_file()
    assert "Seed: `7`" in text
    assert plot_auc_bars(both, tmp_path / "bars.png").read_bytes()[:8] == PNG


def test_merge_per_method_results():
    full = _results()
    erm_only = copy.deepcopy(full)
    erm_only["methods"] = {"erm": full["methods"]["erm"]}
    kd_only = copy.deepcopy(full)
    kd_only["methods"] = {"kd": copy.deepcopy(full["methods"]["kd"])}
    kd_only["methods"]["kd"]["test"]["unbiased"]["auc"] = 0.5  # a rerun: the later part wins
    merged = merge_results(erm_only, kd_only)
    assert set(merged["methods"]) == {"erm", "kd"}
    assert merged["methods"]["kd"]["test"]["unbiased"]["auc"] == 0.5
    assert full["methods"]["kd"]["test"]["unbiased"]["auc"] == 0.93  # inputs unchanged
    other = copy.deepcopy(erm_only)
    other["shortcut"]["p_bias_pos"] = 0.9
    with pytest.raises(DataError, match="disagree"):
        merge_results(erm_only, other)


def test_validate_names_the_missing_key():
    validate_results(_results())
    json.dumps(_results(), allow_nan=False)
    res = _results()
    del res["methods"]["kd"]["test"]["conflicting"]["auc_ci"]
    with pytest.raises(DataError, match=r"methods\.kd\.test\.conflicting\.auc_ci.*missing"):
        validate_results(res, source="results.json")
    with pytest.raises(DataError, match="file 'results.json'"):
        validate_results(res, source="results.json")
    res = _results()
    del res["shortcut"]["kind"]
    with pytest.raises(DataError, match=r"shortcut\.kind"):
        validate_results(res)
    res = _results()
    res["methods"]["erm"]["test"]["unbiased"]["auc"] = float("nan")
    with pytest.raises(DataError, match="never NaN"):
        validate_results(res)
    with pytest.raises(DataError, match=r"experiments\[1\]\.schema"):
        validate_results({"schema": SET_SCHEMA, "experiments": [_results(), {"schema": "v0"}]})


def test_order_methods_puts_unknown_before_oracle():
    assert order_methods(["oracle", "kd_w30", "kd", "erm", "dfr", "teacher", "jtt"]) == [
        "erm", "jtt", "dfr", "teacher", "kd", "kd_w30", "oracle"]


def test_report_cli(tmp_path, capsys):
    from shortcut_kd.cli import main

    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results()))
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "**0.910 [0.880, 0.940]**" in printed
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "figures" / "auc.png").is_file()
