"""DICOM inputs done right: a folder of DICOM files is listed grouped by study and series, and the SimBA bundle
reads a DICOM series folder as one 3D volume (MONAI's ITK series reader), oriented as the same voxels saved as
NIfTI. Built on pydicom's real test files and a small synthetic MR series written with pydicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from test_bundle_inference import DICOM_DATA
from test_bundles import REPO

from shortcut_kd.workflows.inference import check_inputs, list_inputs

DICOMDIR_DATA = DICOM_DATA / "dicomdirtests"


def real(relative: str) -> Path:
    path = DICOMDIR_DATA / relative
    assert path.exists(), f"pydicom's test file {path} is missing: reinstall pydicom (its test files are needed)"
    return path


def write_series(folder: Path, slices: np.ndarray, orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                 origin=(-10.0, -20.0, 30.0), spacing=(0.9, 0.8), thickness=2.5) -> np.ndarray:
    """Write ``slices`` (``(n, rows, columns)`` uint16, in position order) as a single-frame MR series, the file
    names and InstanceNumbers out of position order; return the series' LPS affine of (column, row, slice)."""
    folder.mkdir(parents=True)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    study, series, n = generate_uid(), generate_uid(), len(slices)
    for k, pixels in enumerate(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = study, series, "MR", "anon"
        ds.InstanceNumber = (5 * k) % n + 1  # scrambled: the position decides the order
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * thickness * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing, ds.SliceThickness = list(spacing), thickness  # (between rows, between columns)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{n - k:04d}.dcm", enforce_file_format=True)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row * spacing[1], col * spacing[0], normal * thickness
    affine[:3, 3] = origin
    return affine


def simba_preprocessing():
    """The SimBA bundle's inference preprocessing, without the resize (so the voxels can be compared)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "simba_shortcut_kd" / "configs" / "inference.json"))
    parser["image_size"] = None
    return parser.get_parsed_content("preprocessing"), parser.get("datalist")


def test_a_folder_lists_dicom_by_study_series_and_instance(tmp_path):
    """Real CR and CT studies (pydicom's DICOMDIR test tree) copied under shuffled names, a PNG and a file with a
    broken DICOM header: DICOM rows come first, grouped by (study, series, InstanceNumber), the rest by path."""
    folder = tmp_path / "in"
    folder.mkdir()
    sources = [real(p) for p in ("77654033/CR1/6154", "77654033/CR2/6247", "77654033/CR3/6278",
                                 "77654033/CT2/17106", "77654033/CT2/17136", "77654033/CT2/17166",
                                 "98892001/CT5N/2062", "98892001/CT5N/2392", "98892001/CT5N/2693")]
    for i, src in enumerate(sources):  # names in the opposite order of the instances
        shutil.copy(src, folder / f"{len(sources) - i:02d}.dcm")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "00_photo.png")
    (folder / "05_broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 7)

    files = [item["file"] for item in list_inputs(folder)]
    assert [item["file"] for item in list_inputs(folder)] == files, "stable"
    assert sorted(files) == sorted(str(p) for p in folder.iterdir()), "every file once"
    dicom, rest = files[:len(sources)], files[len(sources):]
    keys = []
    for f in dicom:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        keys.append((ds.StudyInstanceUID, ds.SeriesInstanceUID, int(ds.InstanceNumber)))
    assert keys == sorted(keys) and len({k[:2] for k in keys}) == 5, keys
    assert rest == [str(folder / "00_photo.png"), str(folder / "05_broken.dcm")], "then the others, by path"
    assert [item["file"] for item in list_inputs(folder, group_dicom=False)] == sorted(files)
    assert [item["file"] for item in list_inputs(dicom[::-1])] == dicom[::-1], "a given list keeps its order"


def test_simba_reads_a_dicom_series_folder_as_the_volume_nifti_gives(tmp_path):
    """A 12-slice sagittal MR series (20 rows x 24 columns, names and InstanceNumbers out of position order)
    becomes one item, and the bundle's preprocessing gives the voxels and orientation of the same pixels saved
    as NIfTI; a folder holding two series and a multi-frame file stay one item per file."""
    rng = np.random.default_rng(0)
    slices = rng.integers(0, 4000, (12, 20, 24)).astype(np.uint16)
    series = tmp_path / "cases" / "series_a"
    lps = write_series(series, slices)
    voxels = np.transpose(slices, (2, 1, 0))  # (column, row, slice): the voxel order of the affine above
    nifti = tmp_path / "cases" / "same.nii.gz"
    nibabel.save(nibabel.Nifti1Image(voxels, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), nifti)  # LPS -> RAS
    mixed = tmp_path / "cases" / "mixed"
    mixed.mkdir()
    for name in ("CR2/6247", "CR3/6278"):
        shutil.copy(real(f"77654033/{name}"), mixed / name.replace("/", "_"))
    shutil.copy(DICOM_DATA / "SC_rgb_rle_2frame.dcm", tmp_path / "cases" / "multiframe.dcm")

    preprocessing, datalist = simba_preprocessing()
    assert datalist["dicom_series_as_volume"] is True, "the SimBA bundle reads series as volumes"
    items = list_inputs(tmp_path / "cases", dicom_series_as_volume=True)
    assert {"image": str(series), "file": str(series)} in items
    others = [nifti, tmp_path / "cases" / "multiframe.dcm", *mixed.iterdir()]
    assert sorted(i["file"] for i in items) == sorted([str(series), *map(str, others)])
    assert len(list_inputs(tmp_path / "cases")) == 12 + 4, "by default every file is an item"

    from_dicom = preprocessing({"image": str(series)})["image"]
    from_nifti = preprocessing({"image": str(nifti)})["image"]
    assert from_dicom.shape == from_nifti.shape == (1, 24, 20, 12)
    assert torch.allclose(from_dicom, from_nifti, atol=1e-6), "same voxels, same order"
    loader = preprocessing.transforms[0]  # CheckedLoadImaged, with the image metadata
    affine_dicom = np.asarray(loader({"image": str(series)})["image"].affine)
    affine_nifti = np.asarray(loader({"image": str(nifti)})["image"].affine)
    np.testing.assert_allclose(affine_dicom, affine_nifti, atol=1e-4)
    checked = check_inputs([i for i in items if i["file"] == str(series)], preprocessing, spatial_dims=3, in_channels=1)
    assert checked.failures == [] and len(checked.readable) == 1


def test_copies_of_a_real_mr_slice_make_one_volume(tmp_path):
    """pydicom's MR_small.dcm (64 x 64) copied into an 8-slice series, each slice shifted along the slice normal
    and given its own pixels and SOP Instance UID: one item, read as a (1, 64, 64, 8) volume in position order."""
    source = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
    assert source.is_file(), "pydicom's MR_small.dcm is missing"
    ds = pydicom.dcmread(source)
    base = ds.pixel_array.astype(np.int16)
    orientation = np.asarray(ds.ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    folder = tmp_path / "MR_small_series"
    folder.mkdir()
    for k in range(8):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = 8 - k
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ds.ImagePositionPatient, float) + 0.8 * normal]
        ds.PixelData = np.roll(base, 3 * k, axis=0).tobytes()
        ds.save_as(folder / f"slice{(3 * k) % 8}.dcm")
    items = list_inputs(folder, dicom_series_as_volume=True)
    assert items == [{"image": str(folder), "file": str(folder)}]
    preprocessing, _ = simba_preprocessing()
    volume = preprocessing(dict(items[0]))["image"]
    assert volume.shape == (1, 64, 64, 8)
    expected = np.stack([np.roll(base, 3 * k, axis=0).T for k in range(8)], axis=-1).astype(np.float32)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(volume[0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("as_volume", [False, True])
def test_a_broken_header_does_not_stop_the_listing(tmp_path, as_volume):
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("2062", "2392", "2693"):
        shutil.copy(real(f"98892001/CT5N/{name}"), folder / name)
    (folder / "IM_broken").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 7)
    items = list_inputs(folder, dicom_series_as_volume=as_volume)
    assert items[-1]["file"] == str(folder / "IM_broken")
    assert len(items) == 4, "a broken file in the folder: the series is not read as a volume, every file is listed"
