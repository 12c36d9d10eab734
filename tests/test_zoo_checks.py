"""The model zoo checks (``shortcut-kd validate-bundle``) fail where a submission is broken, and
``shortcut-kd export-bundle`` refuses a run it cannot export; no training here (``test_bundles.py`` exports
real runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_bundles import REPO, TINY, network_of, tiny_bundle

from shortcut_kd.cli import main
from shortcut_kd.errors import ConfigError, DataError
from shortcut_kd.workflows import zoo_checks
from shortcut_kd.workflows.export_bundle import export_bundle


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A tiny ISIC bundle with random weights and a matching ``large_files.yml``."""
    bundle = tiny_bundle("isic2017", tmp_path)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(network_of(bundle).state_dict(), bundle / "models" / "model.pt")
    md5 = zoo_checks.md5sum(bundle / "models" / "model.pt")
    (bundle / "large_files.yml").write_text(
        f"large_files:\n- path: models/model.pt\n  url: ''\n  hash_val: {md5}\n  hash_type: md5\n")
    return bundle


def _edit_metadata(bundle: Path, change) -> None:
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("folder", [spec["folder"] for spec in TINY.values()])
def test_shipped_metadata_is_valid(folder):
    result = zoo_checks.check_metadata_schema(REPO / "bundles" / folder)
    assert result.ok, result.detail
    assert zoo_checks.check_version(REPO / "bundles" / folder).ok


def test_version_missing_from_the_changelog_fails(bundle):
    assert zoo_checks.check_version(bundle).ok
    _edit_metadata(bundle, lambda m: m.update(version="9.9.9"))  # a version the changelog does not list
    result = zoo_checks.check_version(bundle)
    assert not result.ok and "9.9.9" in result.detail and "changelog" in result.detail


def test_tampered_file_fails_its_md5(bundle):
    assert zoo_checks.check_large_files(bundle).ok
    with (bundle / "models" / "model.pt").open("ab") as f:
        f.write(b"\0")
    result = zoo_checks.check_large_files(bundle)
    assert not result.ok and "models/model.pt: md5 differs" in result.detail
    (bundle / "models" / "model.ts").write_bytes(b"x")
    assert "models/model.ts: not listed" in zoo_checks.check_large_files(bundle).detail


def test_metadata_key_of_the_wrong_type_fails_the_schema(bundle):
    assert zoo_checks.check_metadata_schema(bundle).ok
    _edit_metadata(bundle, lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="3"))
    result = zoo_checks.check_metadata_schema(bundle)
    assert not result.ok and "network_data_format/inputs/image/num_channels" in result.detail
    _edit_metadata(bundle, lambda m: m.pop("copyright"))
    assert "'copyright' is a required property" in zoo_checks.check_metadata_schema(bundle).detail


def test_validate_bundle_without_weights_fails(bundle, capsys):
    (bundle / "models" / "model.pt").unlink()
    assert main(["validate-bundle", str(bundle)]) == 1
    table = capsys.readouterr().out
    assert "FAIL  required files" in table and "missing: models/model.pt" in table
    assert "FAIL  TorchScript" in table and "PASS  train properties" in table
    assert "FAIL  infer properties" in table and "model.pt" in table.split("infer properties")[1]
    results = {r.name: r for r in zoo_checks.run_checks(bundle)}
    assert not results["large files"].ok and results["version in changelog"].ok


def test_export_refuses_an_incomplete_run(bundle, tmp_path):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    out = tmp_path / "zoo" / "isic2017_shortcut_kd"
    with pytest.raises(DataError, match="model.pt.*distill stage"):
        export_bundle(bundle, out, run)
    (run / "models" / "model.pt").write_bytes((bundle / "models" / "model.pt").read_bytes())
    with pytest.raises(DataError, match="results.json.*evaluate stage"):
        export_bundle(bundle, out, run)
    # results that scored other weights
    (run / "results.json").write_text(json.dumps({"methods": {"kd": {"checkpoint": {"file": "model.pt",
                                                                                    "sha256": "0" * 64}}}}))
    with pytest.raises(DataError, match="rerun the evaluate stage"):
        export_bundle(bundle, out, run)
    assert not out.exists() and list((tmp_path / "zoo").iterdir()) == []  # no half-written submission
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="--force"):
        export_bundle(bundle, out, run)
    assert main(["export-bundle", str(bundle), str(tmp_path / "new"), "--weights", str(tmp_path / "none")]) == 2


def test_required_packages_name_everything_the_bundles_import():
    """The model zoo's CI pip-installs ``required_packages_version``: it names the toolkit's wheel and every
    runtime dependency of it (torch, MONAI and numpy have their own keys), each pinned to a version."""
    import re
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps} - {"torch", "monai", "numpy"}
    for folder in ("chexpert_shortcut_kd", "isic2017_shortcut_kd", "simba_shortcut_kd"):
        meta = json.loads((REPO / "bundles" / folder / "configs" / "metadata.json").read_text())
        required = {k.lower(): v for k, v in meta["required_packages_version"].items()}
        assert needed | {"shortcut-kd"} <= set(required), (folder, needed - set(required))
        assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in required.values()), folder
        assert "optional_packages_version" not in meta  # MONAI reads it as a deprecated name of the required list
