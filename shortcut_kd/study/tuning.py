"""Tuning: the same number of trials for every method, drawn from its declared search space, scored on the
bias-annotated validation split only.

The trials are drawn up front with Optuna's ``RandomSampler`` (seeded): random search gives every method
the same budget whatever its scores, and a fixed list of trials makes an interrupted tuning resume to the
same choice. Trial 0 is always the bundle's defaults, so tuning never picks something worse on the
validation split than not tuning.
"""

from __future__ import annotations

import json
from typing import Any

from shortcut_kd.errors import ConfigError

__all__ = ["distribution", "draw_trials", "selection_score", "SELECTION_RULE"]

SELECTION_RULE = ("the worst of the AUCs on the two views of the bias-annotated validation split (the shortcut "
                  "on every positive and no negative, and the reverse): a model scores well only if it ranks "
                  "the classes whichever way the shortcut points")


def distribution(spec: Any, where: str = "distribution"):
    """An Optuna distribution from ``{float: [lo, hi], log: bool}``, ``{int: [lo, hi]}`` or ``{choices: [...]}``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(spec, dict):
        raise ConfigError(where, spec, "use {float: [low, high], log: true}, {int: [low, high]} or {choices: [...]}.")
    try:
        if "choices" in spec:
            # a list-valued choice (e.g. kernel sizes) travels as its JSON text: Optuna stores scalars only
            choices: list[Any] = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in spec["choices"]]
            return CategoricalDistribution(choices)
        if "float" in spec:
            low, high = spec["float"]
            return FloatDistribution(float(low), float(high), log=bool(spec.get("log", False)))
        if "int" in spec:
            low, high = spec["int"]
            return IntDistribution(int(low), int(high), log=bool(spec.get("log", False)))
    except (TypeError, ValueError) as e:
        raise ConfigError(where, spec, f"a valid range or list of choices ({e}).") from None
    raise ConfigError(where, spec, "use one of the keys float, int or choices.")


def draw_trials(space: dict[str, dict], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` parameter sets (setting -> value): the defaults (``{}``) first, then random draws."""
    import optuna

    if not space or trials <= 1:
        return [{}]
    distributions = {key: distribution(spec, key) for key, spec in sorted(space.items())}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn: list[dict[str, Any]] = []
    for _ in range(trials - 1):
        for _attempt in range(20):  # a small discrete space repeats itself: draw again, a few times
            trial = study.ask(distributions)
            params = {k: _decode(v, space[k]) for k, v in trial.params.items()}
            study.tell(trial, 0.0)
            if params not in drawn:
                break
        drawn.append(params)
    return [{}, *drawn]


def _decode(value: Any, spec: dict) -> Any:
    if isinstance(value, str) and any(isinstance(c, (list, dict)) for c in spec.get("choices", [])):
        return json.loads(value)
    return value


def selection_score(validation: dict) -> float | None:
    """The model-selection score of a stage's validation metrics (see :data:`SELECTION_RULE`)."""
    aucs = [(validation.get(view) or {}).get("auc") for view in ("aligned", "conflicting")]
    if any(a is None for a in aucs):
        return None
    return min(float(a) for a in aucs if a is not None)
