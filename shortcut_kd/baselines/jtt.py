"""Just Train Twice (JTT): upsample the examples an early ERM model gets wrong.

Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn, "Just Train Twice: Improving Group
Robustness without Training Group Information", ICML 2021.

The two-stage recipe:

1. train an ERM model on the biased training set for a few epochs ``T`` (``jtt_epochs``; early, so
   it has learnt the shortcut but not memorised the exceptions);
2. ``error_ids = find_errors(erm_model, train_loader_without_augmentation, device)``;
3. ``upsampled = jtt_upsample(train_datalist, error_ids, lambda_up)`` (each error ``λ`` times);
4. train a new model *from scratch* on ``upsampled`` with plain ERM, as long as an ERM run (the
   protocol gives it as many steps as ERM by default: ``BaselineSettings.jtt_budget``).

What information it uses: training images and labels only, no bias labels (the paper tunes ``T``
and ``λ`` on a validation set with group labels; here they are fixed settings).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from monai.networks import eval_mode
from torch import nn

from shortcut_kd.errors import ConfigError, DataError

__all__ = ["find_errors", "jtt_upsample"]


def find_errors(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    image_key: str = "image",
    label_key: str = "label",
    id_key: str = "id",
) -> list[str]:
    """Ids of the samples that ``model`` misclassifies (arg-max of its logits != label).

    The model is run in eval mode (its mode is restored afterwards). Use a loader without random
    augmentation, so the errors are those of the data, not of one augmented view.

    Args:
        model: the early-stopped ERM network (outputs logits ``(N, K)``).
        loader: batches of dicts with ``image_key``, ``label_key`` and ``id_key`` (a MONAI DataLoader).
        device: where to run the model.
        image_key: batch key of the images.
        label_key: batch key of the integer labels.
        id_key: batch key of the sample ids (a list of str after collation).

    Returns:
        the ids of the misclassified samples, in loader order.
    """
    errors: list[str] = []
    with eval_mode(model):  # MONAI's: eval mode and no_grad for the block, the mode restored after
        for batch in loader:
            missing = [k for k in (image_key, label_key, id_key) if k not in batch]
            if missing:
                raise DataError(f"the batch has no {missing} (keys: {sorted(batch)}).", column=missing[0],
                                fix="load the datalist as dicts with image, label and id, or set the *_key args.")
            logits = model(torch.as_tensor(batch[image_key]).to(device))
            pred = torch.as_tensor(logits).argmax(dim=1).cpu()
            labels = torch.as_tensor(batch[label_key]).reshape(-1).long().cpu()
            ids = batch[id_key]
            ids = [ids] if isinstance(ids, str) else list(ids)
            if not len(ids) == len(labels) == len(pred):
                raise DataError(f"{len(ids)} ids, {len(labels)} labels and {len(pred)} predictions in one batch.",
                                column=id_key, fix="give every sample one id and one label.")
            errors.extend(str(i) for i, wrong in zip(ids, (pred != labels).tolist()) if wrong)
    return errors


def jtt_upsample(
    datalist: Sequence[Mapping[str, Any]],
    error_ids: Iterable[str],
    lambda_up: int,
    id_key: str = "id",
) -> list[dict]:
    """The JTT training datalist: every error ``lambda_up`` times in total, every other sample once.

    Order (deterministic): the datalist once, in its order, then ``lambda_up - 1`` passes over the
    error samples in datalist order. Items are shallow copies.

    Args:
        datalist: the training datalist (dicts with ``id_key``).
        error_ids: ids returned by :func:`find_errors`.
        lambda_up: the upsampling factor λ (an integer >= 1; the paper uses 6-100).
        id_key: field of the sample id.
    """
    if isinstance(lambda_up, bool) or int(lambda_up) != lambda_up or int(lambda_up) < 1:
        raise ConfigError("lambda_up", lambda_up, "use an integer >= 1 (the number of copies of each error).")
    lambda_up = int(lambda_up)
    errors = {str(i) for i in error_ids}
    ids = []
    for row, item in enumerate(datalist, start=1):
        if id_key not in item:
            raise DataError("the item has no id.", row=row, column=id_key, fix="give every datalist item a unique id.")
        ids.append(str(item[id_key]))
    unknown = sorted(errors - set(ids))
    if unknown:
        raise DataError(f"{len(unknown)} error ids are not in the datalist, e.g. {unknown[:3]}.", column=id_key,
                        fix="pass the same training datalist that find_errors was run on.")
    out = [dict(item) for item in datalist]
    error_items = [item for item, i in zip(datalist, ids) if i in errors]
    for _ in range(lambda_up - 1):
        out.extend(dict(item) for item in error_items)
    return out
