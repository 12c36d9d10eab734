"""A MONAI Deploy application around an exported shortcut-kd bundle: DICOM study in, DICOM Structured Report
out.

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator (the bundle's modalities)
      -> InstanceImageOperator (2D: the bundle's gate and display pixels)  |  DICOMSeriesToVolumeOperator (3D)
      -> MonaiBundleInferenceOperator (the bundle's inference.json: preprocessing without its loader,
         models/model.ts = the distilled student, softmax postprocessing)
      -> StructuredReportOperator (a TID 1500 measurement report referencing the predicted instances)

Run it where the MONAI Deploy App SDK is installed (it needs CUDA):

    python deploy/app.py -i DICOM_FOLDER -o OUTPUT_FOLDER -m EXPORTED_BUNDLE_FOLDER

The SDK-independent steps live in ``shortcut_kd.deploy`` and are tested on CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, ConditionType, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_bundle_inference_operator import IOMapping, MonaiBundleInferenceOperator

from shortcut_kd.deploy import (
    NotForModel, bundle_settings, instance_image, positive_probability, series_selection_rules, write_study_report,
)
from shortcut_kd.io import write_json

logger = logging.getLogger(__name__)


def _instances(study_selected_series_list):
    """Every (series, pydicom dataset) of the selected series, in the selector's order."""
    for selection in study_selected_series_list or []:
        for selected in selection.selected_series:
            for sop in selected.series.get_sop_instances():
                yield selected.series, sop.get_native_sop_instance()


class InstanceImageOperator(Operator):
    """The first instance of the selected series that the bundle's gate accepts, as an ``Image`` of the
    pixels the bundle's own reader gives; the refused instances and their reasons go downstream too."""

    def __init__(self, fragment, *args, settings, **kwargs):
        self.settings = settings
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study_selected_series_list")
        spec.output("image").condition(ConditionType.NONE)
        spec.output("source").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context):
        refused, used = [], None
        for _, ds in _instances(op_input.receive("study_selected_series_list")):
            try:
                pixels, meta = instance_image(ds, self.settings)
            except (NotForModel, ValueError) as e:
                refused.append({"SOPInstanceUID": str(ds.get("SOPInstanceUID", "")), "reason": str(e)})
                continue
            used = ds
            op_output.emit(Image(pixels, metadata=meta), "image")
            break
        op_output.emit({"datasets": [used] if used is not None else [], "refused": refused}, "source")


class SeriesSourceOperator(Operator):
    """For a 3D bundle: the instances of the first selected series, which the volume is made of."""

    def setup(self, spec: OperatorSpec):
        spec.input("study_selected_series_list")
        spec.output("source")

    def compute(self, op_input, op_output, context):
        datasets, series_uid = [], None
        for series, ds in _instances(op_input.receive("study_selected_series_list")):
            series_uid = series_uid or series.SeriesInstanceUID
            if series.SeriesInstanceUID == series_uid:
                datasets.append(ds)
        op_output.emit({"datasets": datasets, "refused": []}, "source")


class StructuredReportOperator(Operator):
    """Write the study's DICOM Structured Report and ``summary.json`` (what was predicted, what was refused
    and why)."""

    def __init__(self, fragment, *args, settings, bundle_dir, output_folder, **kwargs):
        self.settings, self.bundle_dir, self.output_folder = settings, Path(bundle_dir), Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("pred").condition(ConditionType.NONE)
        spec.input("source")

    def compute(self, op_input, op_output, context):
        source = op_input.receive("source")
        pred = op_input.receive("pred") if source["datasets"] else None
        reports = []
        if pred is not None:
            probability = positive_probability(pred)
            reports = [str(write_study_report(source["datasets"], probability, self.settings, self.output_folder,
                                              checkpoint=self.bundle_dir / "models" / "model.ts"))]
        write_json(self.output_folder / "summary.json",
                   {"model": self.settings.name, "version": self.settings.version, "structured_reports": reports,
                    "refused": source["refused"]})


class ShortcutKDApp(Application):
    """DICOM study -> the bundle's prediction as a DICOM Structured Report."""

    def compose(self):
        context: AppContext = Application.init_app_context(self.argv)
        bundle_dir = Path(context.model_path)
        settings = bundle_settings(bundle_dir)
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(context.input_path),
                                         name="study_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=json.dumps(series_selection_rules(settings)),
                                               all_matched=True, name="series_selector")
        inference = MonaiBundleInferenceOperator(
            self, input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", dict, IOType.IN_MEMORY)], app_context=context,
            bundle_path=bundle_dir, name="bundle_inference")
        report = StructuredReportOperator(self, settings=settings, bundle_dir=bundle_dir,
                                          output_folder=Path(context.output_path), name="structured_report")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        if settings.spatial_dims == 2:
            image = InstanceImageOperator(self, settings=settings, name="instance_image")
            self.add_flow(selector, image, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(image, inference, {("image", "image")})
            self.add_flow(image, report, {("source", "source")})
        else:
            volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
            source = SeriesSourceOperator(self, name="series_source")
            self.add_flow(selector, volume, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(selector, source, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(volume, inference, {("image", "image")})
            self.add_flow(source, report, {("source", "source")})
        self.add_flow(inference, report, {("pred", "pred")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    ShortcutKDApp().run()
