"""What each baseline is, what it plugs into, and what information it is given."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BaselineSpec", "BASELINES"]


@dataclass(frozen=True)
class BaselineSpec:
    """Description of one baseline (a method key of results.json).

    Args:
        key: the method key of results.json.
        family: ``"augmentation"`` or ``"group"``.
        plugs_into: how it enters a stage: ``"train_handler"`` (attach to the ``SupervisedTrainer``),
            ``"train_sampler"`` (the training DataLoader's sampler), ``"two_stage"`` (an ERM run, then a
            new run on a changed datalist) or ``"post_hoc"`` (applied to a trained ERM model).
        components: public names in ``shortcut_kd.baselines`` that implement it.
        bias_labels: whose bias attribute / group it reads: ``"none"``, ``"train"`` (every sample of the
            biased training set) or ``"specialist"`` (only the small bias-free subset's).
        uses_specialist: whether it is given the small bias-free specialist subset.
        needs_erm: whether it starts from a trained ERM model (``dfr``) or an early ERM run (``jtt``).
        settings: the ``BaselineSettings`` fields (workflows) that configure it.
        reference: the paper.
        summary: one line for the report.
    """

    key: str
    family: str
    plugs_into: str
    components: tuple[str, ...]
    bias_labels: str
    uses_specialist: bool
    needs_erm: bool
    settings: tuple[str, ...]
    reference: str
    summary: str


BASELINES: dict[str, BaselineSpec] = {
    spec.key: spec
    for spec in (
        BaselineSpec(
            key="randconv", family="augmentation", plugs_into="train_handler", components=("RandConvHandler",),
            bias_labels="none", uses_specialist=False, needs_erm=False, settings=("randconv_kernel_sizes",),
            reference="Xu et al., ICLR 2021",
            summary="ERM on inputs convolved with a random kernel, mixed with the original",
        ),
        BaselineSpec(
            key="mixup", family="augmentation", plugs_into="train_handler", components=("MixUpHandler",),
            bias_labels="none", uses_specialist=False, needs_erm=False, settings=("mix_alpha",),
            reference="Zhang et al., ICLR 2018",
            summary="ERM on convex combinations of image pairs and of their labels",
        ),
        BaselineSpec(
            key="cutmix", family="augmentation", plugs_into="train_handler", components=("CutMixHandler",),
            bias_labels="none", uses_specialist=False, needs_erm=False, settings=("mix_alpha",),
            reference="Yun et al., ICCV 2019",
            summary="ERM on images with a box pasted from another image, labels mixed by area",
        ),
        BaselineSpec(
            key="groupdro", family="group", plugs_into="train_handler", components=("GroupDROHandler",),
            bias_labels="train", uses_specialist=False, needs_erm=False, settings=("groupdro_eta",),
            reference="Sagawa et al., ICLR 2020",
            summary="minimises the group-weighted loss, weights pushed towards the worst (label, bias) group",
        ),
        BaselineSpec(
            key="reweight", family="group", plugs_into="train_sampler",
            components=("group_balanced_sampler", "group_balanced_weights"),
            bias_labels="train", uses_specialist=False, needs_erm=False, settings=(),
            reference="Idrissi et al., CLeaR 2022",
            summary="ERM with every (label, bias) group sampled equally often",
        ),
        BaselineSpec(
            key="jtt", family="group", plugs_into="two_stage", components=("find_errors", "jtt_upsample"),
            bias_labels="none", uses_specialist=False, needs_erm=True, settings=("jtt_epochs", "jtt_lambda", "jtt_budget"),
            reference="Liu et al., ICML 2021",
            summary="ERM for a few epochs, then retraining from scratch with its errors upsampled λ times",
        ),
        BaselineSpec(
            key="dfr", family="group", plugs_into="post_hoc", components=("dfr_retrain",),
            bias_labels="specialist", uses_specialist=True, needs_erm=True, settings=(),
            reference="Kirichenko et al., ICLR 2023",
            summary="the ERM model's last layer refitted on the group-balanced bias-free subset",
        ),
    )
}
"""The baselines by results.json method key (``erm``, ``teacher``, ``kd``, ``oracle`` are protocol stages)."""
