"""The results.json contract (schema ``shortcut-kd/results/v1``): validation and merging.

One **experiment** (one dataset, architecture and shortcut) is exactly this document::

    {"schema": "shortcut-kd/results/v1", "dataset": ..., "architecture": ...,
     "shortcut": {"name", "kind", "p_bias_pos", "p_bias_neg"},
     "methods": {method: {"test": {test_set: test entry}}}}

with these optional keys that the report uses when present: ``settings`` (the settings that produced
it), ``seed``, ``figures`` (caption -> path relative to the results file) and
``attention_on_shortcut`` (method -> mean Grad-CAM mass inside the shortcut region).

Several experiments (e.g. one localized and one diffuse shortcut) go in one file as a **results set**::

    {"schema": "shortcut-kd/results-set/v1", "experiments": [experiment, experiment, ...]}

each element unchanged, so any experiment can be cut out and used on its own.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable

from shortcut_kd.data.splits import TEST_SETS
from shortcut_kd.errors import DataError
from shortcut_kd.evaluation.metrics import TEST_ENTRY_KEYS

__all__ = ["SCHEMA", "SET_SCHEMA", "METHOD_ORDER", "TEST_SETS", "REFERENCE_METHODS", "validate_results",
           "experiments_of", "merge_results", "order_methods", "order_test_sets"]

SCHEMA = "shortcut-kd/results/v1"
SET_SCHEMA = "shortcut-kd/results-set/v1"
BASELINES = ("randconv", "mixup", "cutmix", "groupdro", "jtt", "reweight", "dfr", "finetune")
METHOD_ORDER = ("erm", *BASELINES, "teacher", "kd", "oracle")
"""Report order: ERM, the baselines, the specialist teacher, the distilled student, the oracle."""
REFERENCE_METHODS = ("oracle",)
"""Methods that are references rather than contenders: they need a large bias-free training set,
which is not available in practice, so they are not marked best in the report's table."""


def _fail(message: str, key: str, source: str | None, fix: str) -> DataError:
    return DataError(message, file=source, column=key, fix=fix)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_results(results: Any, source: str | None = None) -> None:
    """Check an experiment or a results set against the schema; raise on the first problem.

    Args:
        results: the parsed results.json.
        source: the file it came from (named in the error).

    Raises:
        DataError: naming the key path (e.g. ``methods.kd.test.conflicting.auc_ci``) and the fix.
    """
    if not isinstance(results, dict):
        raise _fail(f"expected a JSON object, got {type(results).__name__}.", "<root>", source,
                    f"write an object with \"schema\": \"{SCHEMA}\".")
    if results.get("schema") == SET_SCHEMA:
        experiments = results.get("experiments")
        if not isinstance(experiments, list) or not experiments:
            raise _fail("missing or empty.", "experiments", source, "list one or more experiments.")
        for i, experiment in enumerate(experiments):
            _validate_experiment(experiment, f"experiments[{i}].", source)
        return
    _validate_experiment(results, "", source)


def _validate_experiment(exp: Any, prefix: str, source: str | None) -> None:
    def need(container: dict, key: str, kind: type | tuple, where: str, fix: str) -> Any:
        if key not in container:
            raise _fail("missing.", where + key, source, fix)
        value = container[key]
        if not isinstance(value, kind):
            raise _fail(f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}.", where + key,
                        source, fix)
        return value

    if not isinstance(exp, dict):
        raise _fail("expected an object.", prefix.rstrip(".") or "<root>", source, "give one experiment object.")
    schema = exp.get("schema")
    if schema != SCHEMA:
        raise _fail(f"is {schema!r}.", prefix + "schema", source,
                    f"set it to \"{SCHEMA}\" (or \"{SET_SCHEMA}\" with an \"experiments\" list).")
    need(exp, "dataset", str, prefix, "name the dataset, e.g. \"isic2017\".")
    need(exp, "architecture", str, prefix, "name the network, e.g. \"resnet18\".")
    shortcut = need(exp, "shortcut", dict, prefix, "give {\"name\", \"kind\", \"p_bias_pos\", \"p_bias_neg\"}.")
    need(shortcut, "name", str, prefix + "shortcut.", "name the shortcut, e.g. \"patch\".")
    need(shortcut, "kind", str, prefix + "shortcut.", "use \"localized\" or \"diffuse\".")
    for key in ("p_bias_pos", "p_bias_neg"):
        value = need(shortcut, key, (int, float, type(None)), prefix + "shortcut.", "a rate in [0, 1] or null.")
        if value is not None and not (_is_number(value) and 0 <= value <= 1):
            raise _fail(f"{value!r} is not in [0, 1].", prefix + "shortcut." + key, source, "a rate in [0, 1].")
    methods = need(exp, "methods", dict, prefix, "map method names to {\"test\": {...}}.")
    for method, body in methods.items():
        where = f"{prefix}methods.{method}."
        if not isinstance(body, dict):
            raise _fail("expected an object.", where.rstrip("."), source, "give {\"test\": {...}}.")
        tests = need(body, "test", dict, where, "map test-set names to metric entries.")
        for test, entry in tests.items():
            _validate_entry(entry, f"{where}test.{test}", source)
    for key, kind in (("settings", dict), ("figures", dict), ("attention_on_shortcut", dict), ("seed", int)):
        if key in exp and not isinstance(exp[key], kind):
            raise _fail(f"expected {kind.__name__}, got {type(exp[key]).__name__}.", prefix + key, source,
                        "fix the value or remove the key (it is optional).")


def _validate_entry(entry: Any, where: str, source: str | None) -> None:
    if not isinstance(entry, dict):
        raise _fail("expected an object of metrics.", where, source, f"give the keys {list(TEST_ENTRY_KEYS)}.")
    for key in TEST_ENTRY_KEYS:
        if key not in entry:
            raise _fail("missing.", f"{where}.{key}", source,
                        "write every metric (null where undefined); compute_metrics returns the full entry.")
        value = entry[key]
        if key == "n":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _fail(f"{value!r} is not a count.", f"{where}.n", source, "the number of test samples.")
        elif key == "auc_ci":
            if value is not None and not (isinstance(value, list) and len(value) == 2
                                          and all(_is_number(v) for v in value) and value[0] <= value[1]):
                raise _fail(f"{value!r} is not [low, high].", f"{where}.auc_ci", source,
                            "a two-number list with low <= high, or null.")
        elif value is not None and not _is_number(value):
            raise _fail(f"{value!r} is not a number or null.", f"{where}.{key}", source,
                        "a finite number, or null where undefined (never NaN).")
        elif value is not None and key != "delta_tpr" and not 0 <= value <= 1:
            raise _fail(f"{value!r} is not in [0, 1].", f"{where}.{key}", source, "a rate in [0, 1].")


def experiments_of(results: dict) -> list[dict]:
    """The experiments of a single-experiment document or of a results set, as a list."""
    if results.get("schema") == SET_SCHEMA:
        return list(results["experiments"])
    return [results]


def merge_results(*parts: dict | Iterable[dict]) -> dict:
    """Combine per-method and per-shortcut results into one document.

    Experiments with the same dataset, architecture and shortcut name are merged: their methods and
    test sets are united, a later part replacing an earlier one's entry for the same method and test
    set (a rerun), and the optional ``settings`` / ``figures`` / ``attention_on_shortcut`` maps are
    updated the same way. Inputs are not modified.

    Args:
        parts: experiments, results sets, or lists of either, in order of precedence (last wins).

    Returns:
        one experiment when everything shares a shortcut, otherwise a results set (in first-seen order).

    Raises:
        DataError: when two parts name the same shortcut with different settings (kind or rates).
    """
    flat: list[dict] = []
    for part in parts:
        items = [part] if isinstance(part, dict) else list(part)
        for item in items:
            validate_results(item)
            flat.extend(experiments_of(item))
    if not flat:
        raise ValueError("merge_results needs at least one results document.")
    merged: dict[tuple, dict] = {}
    for exp in flat:
        key = (exp["dataset"], exp["architecture"], exp["shortcut"]["name"])
        if key not in merged:
            merged[key] = copy.deepcopy(exp)
            continue
        target = merged[key]
        if target["shortcut"] != exp["shortcut"]:
            raise DataError(f"two results for shortcut '{key[2]}' disagree: {target['shortcut']} vs "
                            f"{exp['shortcut']}.", column="shortcut",
                            fix="merge only results of the same experiment, or rename one shortcut.")
        for method, body in exp["methods"].items():
            target["methods"].setdefault(method, {"test": {}})["test"].update(copy.deepcopy(body["test"]))
        for extra in ("settings", "figures", "attention_on_shortcut"):
            if extra in exp:
                target.setdefault(extra, {}).update(copy.deepcopy(exp[extra]))
        if "seed" in exp:
            target["seed"] = exp["seed"]
    experiments = list(merged.values())
    return experiments[0] if len(experiments) == 1 else {"schema": SET_SCHEMA, "experiments": experiments}


def order_methods(names: Iterable[str]) -> list[str]:
    """Report order: erm, baselines, teacher, kd, then unknown names (e.g. ablations) A-Z, oracle last."""
    names = list(dict.fromkeys(names))
    known = [m for m in METHOD_ORDER if m in names and m != "oracle"]
    others = sorted(n for n in names if n not in METHOD_ORDER)
    return known + others + (["oracle"] if "oracle" in names else [])


def order_test_sets(names: Iterable[str]) -> list[str]:
    """The test-set order of shortcut_kd.data.splits.TEST_SETS (unbiased, aligned, conflicting, clean, ood), then
    any others A-Z."""
    names = list(dict.fromkeys(names))
    return [t for t in TEST_SETS if t in names] + sorted(n for n in names if n not in TEST_SETS)
