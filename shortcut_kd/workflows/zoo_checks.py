"""``shortcut-kd validate-bundle PATH``: the MONAI model zoo's CI checks of a bundle, run locally.

Modelled on the model zoo's ``ci/verify_bundle.py``: the necessary and preferred files, the version in the
changelog, the metadata format, the large files' hashes, ``verify_net_in_out``, TorchScript export
(``ckpt_export``) and the workflow properties. Two checks the zoo's CI leaves to each bundle are added: output
parity of the TorchScript and ONNX exports with the checkpoint. Every check runs offline, on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["CheckResult", "REQUIRED_FILES", "PREFERRED_FILES", "SCHEMA_FILE", "TS_ATOL", "ONNX_ATOL", "md5sum",
           "run_checks", "format_table", "add_arguments", "run"]

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "LICENSE", "docs/README.md", "models/model.pt")
PREFERRED_FILES = ("large_files.yml", "docs/data_license.txt", "models/model.ts")
SCHEMA_FILE = Path(__file__).with_name("zoo_metadata_schema.json")
"""The metadata schema, shipped: MONAI's ``verify_metadata`` downloads the schema named in the metadata, which
needs the network; this one is checked with ``jsonschema`` directly."""
NET_ID = "network_def"
TS_ATOL = 1e-5
"""TorchScript vs checkpoint: the same kernels, so only float rounding differs."""
ONNX_ATOL = 1e-4
"""ONNX Runtime vs PyTorch: other kernels (fused convolutions), so a looser bound."""


@dataclass
class CheckResult:
    """One check: its name, whether it passed, what it found; a failed ``required`` check fails the bundle."""

    name: str
    ok: bool
    detail: str
    required: bool = True


def md5sum(path: str | Path) -> str:
    """The MD5 of a file, as ``large_files.yml`` records it (MONAI's ``check_hash`` verifies, it does not
    return the hash)."""
    from shortcut_kd.provenance import file_digest

    return file_digest(path, "md5") or ""


def bundle_dataset(bundle: Path) -> str:
    """The dataset a bundle reads (``splits#dataset`` of ``configs/train.json``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    return str(parser["splits"]["dataset"])


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def check_files(bundle: Path) -> list[CheckResult]:
    """The zoo's necessary files (``models/model.pt`` and ``configs/inference.json`` included: a zoo bundle
    ships weights and runs inference), then the preferred ones (a warning when missing)."""
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    absent = [f for f in PREFERRED_FILES if not (bundle / f).is_file()]
    return [CheckResult("required files", not missing, f"missing: {', '.join(missing)}" if missing else
                        ", ".join(REQUIRED_FILES)),
            CheckResult("preferred files", not absent, f"missing: {', '.join(absent)}" if absent else
                        ", ".join(PREFERRED_FILES), required=False)]


def check_version(bundle: Path) -> CheckResult:
    """``version`` is set and has an entry in ``changelog``."""
    meta = _metadata(bundle)
    version, changelog = meta.get("version"), meta.get("changelog")
    if not version or not isinstance(changelog, dict):
        return CheckResult("version in changelog", False, "metadata needs 'version' and a 'changelog' dict")
    ok = version in changelog
    return CheckResult("version in changelog", ok, f"{version}: {changelog[version]}" if ok else
                       f"version {version} is missing from the changelog ({sorted(changelog)})")


def check_metadata_schema(bundle: Path) -> CheckResult:
    """``configs/metadata.json`` against :data:`SCHEMA_FILE` (every error, by its place in the file)."""
    try:
        import jsonschema
    except ImportError:
        return CheckResult("metadata schema", False, "jsonschema is not installed: pip install 'shortcut-kd[zoo]'")
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(_metadata(bundle)), key=lambda e: list(e.absolute_path))
    detail = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5])
    return CheckResult("metadata schema", not errors, detail or f"valid against {SCHEMA_FILE.name}")


def check_large_files(bundle: Path) -> CheckResult:
    """Every ``large_files.yml`` entry exists with its hash (MONAI's ``check_hash``) and every file under
    ``models/`` is listed."""
    import yaml
    from monai.apps.utils import check_hash

    path = bundle / "large_files.yml"
    if not path.is_file():
        return CheckResult("large files", True, "no large_files.yml", required=False)
    entries = (yaml.safe_load(path.read_text()) or {}).get("large_files") or []
    problems = []
    for entry in entries:
        file = bundle / str(entry.get("path", ""))
        if not file.is_file():
            problems.append(f"{entry.get('path')}: missing")
        elif not check_hash(str(file), entry.get("hash_val"), entry.get("hash_type", "md5")):
            problems.append(f"{entry.get('path')}: {entry.get('hash_type', 'md5')} differs")
    listed = {str(e.get("path")) for e in entries}
    models = bundle / "models"
    unlisted = sorted(str(p.relative_to(bundle)) for p in models.rglob("*") if p.is_file()) if models.is_dir() else []
    problems += [f"{p}: not listed" for p in unlisted if p not in listed]
    return CheckResult("large files", not problems, "; ".join(problems) or f"{len(entries)} files, hashes match")


def _network(bundle: Path, ckpt: Path | None = None):
    """``network_def`` of ``configs/inference.json``, in eval mode, with ``ckpt`` loaded."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content(NET_ID)
    if ckpt is not None:
        net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    return net.eval()


def _example_input(bundle: Path, batch: int = 2):
    """A random batch of the shape ``network_data_format`` gives the input (``*`` sizes: 32)."""
    import torch

    fmt = next(iter(_metadata(bundle)["network_data_format"]["inputs"].values()))
    shape = [s if isinstance(s, int) else 32 for s in fmt["spatial_shape"]]
    low, high = (fmt.get("value_range") or [0, 1])[:2]
    torch.manual_seed(0)
    return low + (high - low) * torch.rand(batch, int(fmt["num_channels"]), *shape)


def check_net_in_out(bundle: Path) -> CheckResult:
    """MONAI's ``verify_net_in_out`` on ``network_def`` of ``configs/inference.json``."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(NET_ID, meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle), device="cpu")
    return CheckResult("network input/output", True, "verify_net_in_out: shapes and dtypes match the metadata")


def check_torchscript(bundle: Path) -> CheckResult:
    """``ckpt_export`` of ``models/model.pt`` (to a temporary file, as the zoo's CI does beside the bundle's own),
    and the outputs of that export and of ``models/model.ts`` (if shipped) equal the checkpoint's."""
    import torch
    from monai.bundle import ckpt_export

    x = _example_input(bundle)
    with torch.no_grad():
        expected = _network(bundle, bundle / "models" / "model.pt")(x)
    diffs = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_export(NET_ID, filepath=str(Path(tmp) / "verify_model.ts"), ckpt_file=str(bundle / "models" / "model.pt"),
                    meta_file=str(bundle / "configs" / "metadata.json"),
                    config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle))
        candidates = {"ckpt_export": Path(tmp) / "verify_model.ts", "models/model.ts": bundle / "models" / "model.ts"}
        for name, path in candidates.items():
            if path.is_file():
                with torch.no_grad():
                    diffs[name] = float((torch.jit.load(str(path), map_location="cpu")(x) - expected).abs().max())
    ok = all(d <= TS_ATOL for d in diffs.values())
    return CheckResult("TorchScript", ok, ", ".join(f"{k} max |Δ| {v:.1e}" for k, v in diffs.items())
                       + f" (atol {TS_ATOL:g})")


def check_onnx(bundle: Path) -> CheckResult:
    """The checkpoint exported to ONNX (MONAI's ``convert_to_onnx``, batch axis dynamic) and run in ONNX Runtime:
    its outputs within :data:`ONNX_ATOL` of PyTorch's."""
    try:
        import onnxruntime
    except ImportError:
        return CheckResult("ONNX", False, "onnx / onnxruntime are not installed: pip install 'shortcut-kd[zoo]'")
    import torch
    from monai.networks.utils import convert_to_onnx

    net = _network(bundle, bundle / "models" / "model.pt")
    x = _example_input(bundle)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter (dynamo=False): the same graph as ckpt_export, and much faster here
        model = convert_to_onnx(net, [x], input_names=["image"], output_names=["pred"],
                                dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}}, dynamo=False)
        expected = net(x).numpy()
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    diff = float(abs(got - expected).max())
    opset = model.opset_import[0].version
    return CheckResult("ONNX", diff <= ONNX_ATOL, f"onnxruntime max |Δ| {diff:.1e} (atol {ONNX_ATOL:g}, opset {opset})")


def _sample_dataset(bundle: Path, folder: Path) -> Path:
    """A small synthetic dataset in the native layout of the bundle's dataset (``splits#dataset``): the zoo's CI
    has no data either, and the train workflow builds its splits from a dataset on disk."""
    from shortcut_kd.data.synthetic import synthesize

    return synthesize(bundle_dataset(bundle), folder, n=48, seed=0, image_size=16)


def check_properties(bundle: Path, dataset_dir: str | Path | None = None) -> list[CheckResult]:
    """``ConfigWorkflow.check_properties()`` of the train (``configs/train.json``) and infer
    (``configs/inference.json``) workflows, initialised on a sample dataset with ``output_dir`` in a temporary
    folder, and the infer workflow's ``ckpt_path`` present."""
    from monai.bundle import ConfigWorkflow

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(dataset_dir) if dataset_dir else _sample_dataset(bundle, Path(tmp) / "data")
        image = next(p for p in sorted(data.rglob("*")) if p.suffix in (".jpg", ".png", ".gz", ".nii", ".dcm"))
        for workflow_type, config, source in (("train", "train.json", data), ("infer", "inference.json", image)):
            overrides: dict[str, Any] = {"bundle_root": str(bundle), "dataset_dir": str(source),
                                         "output_dir": str(Path(tmp) / "out"), "num_workers": 0}
            if workflow_type == "train":
                overrides["cache_rate"] = 0.0  # instantiate the datasets without preprocessing them
            workflow = ConfigWorkflow(config_file=str(bundle / "configs" / config),
                                      meta_file=str(bundle / "configs" / "metadata.json"),
                                      logging_file=str(bundle / "configs" / "logging.conf"),
                                      workflow_type=workflow_type, **overrides)
            workflow.initialize()
            name = f"{workflow_type} properties"
            try:
                missing = workflow.check_properties()  # instantiates every required property
            except Exception as e:  # the toolkit's own error (file, field, fix) rather than MONAI's wrapper
                from shortcut_kd.errors import find_toolkit_error

                results.append(CheckResult(name, False, _message(find_toolkit_error(e) or e)))
                continue
            detail = f"missing: {missing}" if missing else f"{len(workflow.properties or {})} properties"
            ok = missing == []
            if workflow_type == "infer":
                ckpt = Path(workflow.parser.get_parsed_content("ckpt_path"))
                ok = ok and ckpt.is_file()
                detail += f"; ckpt_path {ckpt.relative_to(bundle) if ckpt.is_relative_to(bundle) else ckpt}"
            results.append(CheckResult(name, ok, detail))
    return results


def _message(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _guard(name: str, check: Callable[[], CheckResult | list[CheckResult]]) -> list[CheckResult]:
    """Run one check; an exception fails it with its message (the other checks still run)."""
    try:
        out = check()
    except Exception as e:  # a check that cannot even run is a failed check, reported like the others
        logger.debug("check %s raised", name, exc_info=True)
        return [CheckResult(name, False, _message(e))]
    return out if isinstance(out, list) else [out]


def run_checks(bundle: str | Path, dataset_dir: str | Path | None = None) -> list[CheckResult]:
    """Every check on the bundle folder ``bundle``; the checks that need a file the first check finds missing
    are failed without running.

    Args:
        bundle: a bundle folder (``configs/``, ``models/``, ...).
        dataset_dir: a small dataset in the bundle's native layout for the train workflow's properties
            (default: 48 synthetic images).
    """
    bundle = Path(bundle).resolve()
    results = _guard("required files", lambda: check_files(bundle))
    if not (bundle / "configs" / "metadata.json").is_file():
        return results
    results += _guard("version in changelog", lambda: check_version(bundle))
    results += _guard("metadata schema", lambda: check_metadata_schema(bundle))
    results += _guard("large files", lambda: check_large_files(bundle))
    results += _guard("network input/output", lambda: check_net_in_out(bundle))
    if (bundle / "models" / "model.pt").is_file():
        results += _guard("TorchScript", lambda: check_torchscript(bundle))
        results += _guard("ONNX", lambda: check_onnx(bundle))
    else:
        results += [CheckResult(n, False, "no models/model.pt") for n in ("TorchScript", "ONNX")]
    properties = _guard("properties", lambda: check_properties(bundle, dataset_dir))
    return results + properties


def format_table(results: list[CheckResult]) -> str:
    """The results as a plain-text table, then a one-line summary."""
    width = max(len(r.name) for r in results)
    rows = [f"{'PASS' if r.ok else ('FAIL' if r.required else 'WARN')}  {r.name:<{width}}  {r.detail}"
            for r in results]
    required = [r for r in results if r.required]
    failed = [r.name for r in required if not r.ok]
    warnings = [r.name for r in results if not r.required and not r.ok]
    summary = f"{len(required) - len(failed)}/{len(required)} required checks passed" + \
              (f"; failed: {', '.join(failed)}" if failed else "") + \
              (f"; warnings: {', '.join(warnings)}" if warnings else "")
    return "\n".join(rows + [summary])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the bundle folder to check (e.g. one written by shortcut-kd export-bundle)")
    parser.add_argument("--dataset-dir", help="a small dataset in the bundle's native layout for the train "
                                              "workflow's properties (default: 48 synthetic images)")


def run(args: argparse.Namespace) -> int:
    from shortcut_kd.errors import ConfigError

    if not Path(args.path).is_dir():
        raise ConfigError("PATH", args.path, "give a bundle folder (one with configs/metadata.json).")
    results = run_checks(args.path, args.dataset_dir)
    print(format_table(results))
    return 1 if any(r.required and not r.ok for r in results) else 0
