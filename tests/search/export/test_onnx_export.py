"""ONNX in export folders, through the real command line: ``export-best --onnx``, ``export-onnx`` and
``predict --runtime onnx`` on the main study's export (copies of its storage and export; neither is changed).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from maskopt.cli import cli
from maskopt.search.export import onnx as onnx_module

onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, *fragments: str) -> None:
    """Exit 1 through the CLI's error path, one short message, no traceback."""
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.startswith("Error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def storage_copy(main_study, folder: Path) -> str:
    """A copy of the main study's storage (an export notes itself there), as a URL."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(main_study.db, folder / "main.db")
    return f"sqlite:///{folder / 'main.db'}"


def export_cli(main_study, storage: str, *args):
    return invoke("export-best", "--storage", storage, "--device", "cpu", "--cache-dir", main_study.cache_dir,
                  "--quiet", *args)


def predict_cli(main_study, model: Path, out: Path, *args):
    return invoke("predict", "--model", model, "--data", main_study.data, "--out", out, "--cache-dir",
                  main_study.cache_dir, "--quiet", *args)


def mismatching_exporter(monkeypatch) -> None:
    """Export every graph without the flip its export has: a real graph that PyTorch does not match."""
    real = onnx_module.export_onnx_ensemble

    def export(members, path, *, tta=False, **kwargs):
        return real(members, path, tta=not tta, **kwargs)

    monkeypatch.setattr(onnx_module, "export_onnx_ensemble", export)


# --- export-best --onnx ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_export(main_study, tmp_path_factory):
    """``export-best --onnx --tta`` of the main study, on a copy of its storage."""
    root = tmp_path_factory.mktemp("onnx-export")
    storage = storage_copy(main_study, root)
    result = export_cli(main_study, storage, "--onnx", "--tta", "--out", root / "export")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root / "export", storage, result.output


def test_export_best_writes_a_verified_graph_and_records_it(onnx_export):
    out, _, output = onnx_export
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "model.safetensors",
                                                     "submission.csv"]
    config = json.loads((out / "config.json").read_text())
    graph = config["onnx"]
    assert (graph["file"], graph["opset"]) == ("model.onnx", 17)
    assert graph["preprocessing"]["image_size"] == 32 and graph["preprocessing"]["normalisation"] == "in_graph"
    check = graph["check"]
    # 100 of the 140 training images: a full batch of 64 and a partial one of 36.
    assert check["images"] == 100 and check["passed"] is True and check["top1_agreement"] == 1.0
    assert 0 <= check["max_abs_score_diff"] <= check["tolerance"] == 1e-3
    assert check["torch_macro_f1"] == check["onnx_macro_f1"] and 0 < check["torch_macro_f1"] <= 1
    assert ("  ONNX: model.onnx (opset 17), checked against PyTorch on 100 training images (labelled):\n"
            f"    largest score difference {check['max_abs_score_diff']:.2g} (tolerance 0.001), top-1 agreement "
            f"100.0%, macro F1 {check['torch_macro_f1']:.4f} PyTorch / {check['onnx_macro_f1']:.4f} ONNX") in output


def test_the_onnx_runtime_writes_the_torch_runtimes_submission(onnx_export, main_study, tmp_path, monkeypatch):
    predict_module = importlib.import_module("maskopt.search.export.predict")  # the package names the function
    out, _, _ = onnx_export

    def no_torch_model(*args, **kwargs):
        raise AssertionError("the onnx runtime built a PyTorch model")

    monkeypatch.setattr(predict_module, "build_model", no_torch_model)
    result = predict_cli(main_study, out, tmp_path / "onnx.csv", "--runtime", "onnx")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "onnx.csv").read_bytes() == (out / "submission.csv").read_bytes()  # TTA inside the graph


def test_the_graph_and_its_record_round_trip_through_the_config(onnx_export, tmp_path):
    from maskopt.search.export import ExportConfig, OnnxCheck, OnnxFile, OnnxPreprocessing

    out, _, _ = onnx_export
    config = ExportConfig.from_json(out)
    assert isinstance(config.onnx, OnnxFile) and config.onnx.preprocessing == OnnxPreprocessing(image_size=32)
    assert isinstance(config.onnx.check, OnnxCheck) and config.onnx.check.passed
    assert config.to_dict() == json.loads((out / "config.json").read_text())


def test_a_graph_that_does_not_match_pytorch_leaves_the_export_as_it_was(onnx_export, main_study, tmp_path,
                                                                         monkeypatch):
    out = Path(shutil.copytree(onnx_export[0], tmp_path / "export"))
    before = tree_digest(out)
    mismatching_exporter(monkeypatch)
    result = export_cli(main_study, storage_copy(main_study, tmp_path / "db"), "--onnx", "--tta", "--force",
                        "--out", out)
    assert_clean_error(result, "the ONNX graph does not match PyTorch on 100 images: scores differ by up to ",
                       "(tolerance 0.001), top-1 agreement ", "; macro F1 ",
                       "Export without ONNX; the PyTorch export predicts as before")
    assert tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_re_exporting_without_onnx_removes_the_old_graph(onnx_export, main_study, tmp_path):
    """model.onnx is the old export's own file: a re-export replaces it, and would never leave a stale graph."""
    out = Path(shutil.copytree(onnx_export[0], tmp_path / "export"))
    result = export_cli(main_study, storage_copy(main_study, tmp_path / "db"), "--tta", "--force", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "submission.csv"]
    assert "onnx" not in json.loads((out / "config.json").read_text()) and "ONNX" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--onnx-opset", "13"], "Error: --onnx-opset is the opset of the ONNX graph that --onnx writes: pass --onnx "
                             "too, or leave out --onnx-opset\n"),
    (["--onnx", "--onnx-opset", "9"], "Error: ONNX opset 9 is not supported; choose 13..20 (default 17)\n"),
])
def test_onnx_options_are_checked_before_any_work(main_study, tmp_path, args, message):
    storage = storage_copy(main_study, tmp_path)
    before = tree_digest(tmp_path)
    result = export_cli(main_study, storage, *args, "--out", tmp_path / "export")
    assert_clean_error(result)
    assert result.output == message
    assert tree_digest(tmp_path) == before and not (tmp_path / "export").exists()


# --- export-onnx -------------------------------------------------------------------------------------


@pytest.fixture
def export_copy(main_study, tmp_path) -> Path:
    """A copy of the main study's export, without a graph."""
    return Path(shutil.copytree(main_study.export, tmp_path / "export"))


def test_export_onnx_adds_a_verified_graph_to_an_export(export_copy, main_study, tmp_path):
    before = json.loads((export_copy / "config.json").read_text())
    result = invoke("export-onnx", export_copy, "--data", main_study.data, "--cache-dir", main_study.cache_dir,
                    "--quiet")
    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = result.output.splitlines()
    assert lines[0] == f"added model.onnx to {export_copy}/"
    assert lines[1] == (f"  ONNX: model.onnx (opset 17), checked against PyTorch on 42 of the 42 eval images of "
                        f"{main_study.data}:")
    assert lines[2].startswith("    largest score difference ") and "top-1 agreement 100.0%" in lines[2]
    assert "macro F1" not in lines[2]  # eval images have no labels
    config = json.loads((export_copy / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "onnx"} == before
    assert config["onnx"]["file"] == "model.onnx" and config["onnx"]["check"]["images"] == 42
    assert sorted(p.name for p in export_copy.iterdir()) == ["config.json", "model.onnx", "model.safetensors",
                                                             "submission.csv"]

    # The demo-like export's submission, from onnxruntime.
    result = predict_cli(main_study, export_copy, tmp_path / "onnx.csv", "--runtime", "onnx")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "onnx.csv").read_bytes() == (export_copy / "submission.csv").read_bytes()

    # A graph is replaced only with --force.
    digest = tree_digest(export_copy)
    result = invoke("export-onnx", export_copy, "--data", main_study.data, "--quiet")
    assert_clean_error(result, f"{export_copy} has an ONNX graph already (model.onnx); pass --force to replace it")
    assert tree_digest(export_copy) == digest
    result = invoke("export-onnx", export_copy, "--data", main_study.data, "--opset", "13", "--force",
                    "--cache-dir", main_study.cache_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((export_copy / "config.json").read_text())["onnx"]["opset"] == 13
    assert [p.name for p in export_copy.iterdir() if p.name.startswith(".")] == []


def test_export_onnx_from_python_verifies_on_a_labelled_dataset(export_copy, main_study, tmp_path):
    """A CSV dataset labelled with the export's class names: 100 of its images, with their labels for macro F1."""
    import maskopt
    from maskopt.search.data.dataset import load_dataset

    train = load_dataset(main_study.data)
    listing = tmp_path / "train.csv"
    listing.write_text("path,label\n" + "".join(f"{path},{train.class_names[label]}\n"
                                                for path, label in zip(train.paths, train.labels)))
    result = maskopt.export_onnx_folder(export_copy, data=listing, cache_dir=main_study.cache_dir, quiet=True)
    assert result.out == export_copy and result.onnx.check.passed and result.onnx.check.images == 100
    assert result.verified_on == f"100 of the 140 images of {listing} (labelled)"
    assert result.onnx.check.torch_macro_f1 == result.onnx.check.onnx_macro_f1 > 0


def test_export_onnx_refuses_when_nothing_can_be_verified(export_copy):
    before = tree_digest(export_copy)
    result = invoke("export-onnx", export_copy)
    assert_clean_error(result, "nothing to verify the ONNX graph on: an export does not record where its dataset "
                               "is. Give --data: ")
    assert tree_digest(export_copy) == before


def test_export_onnx_leaves_a_graph_that_does_not_match_out(export_copy, main_study, monkeypatch):
    before = tree_digest(export_copy)
    mismatching_exporter(monkeypatch)
    # The main export has no flip: the graph gets one.
    result = invoke("export-onnx", export_copy, "--data", main_study.data, "--cache-dir", main_study.cache_dir,
                    "--quiet")
    assert_clean_error(result, "the ONNX graph does not match PyTorch on 42 images")
    assert tree_digest(export_copy) == before
    assert sorted(p.name for p in export_copy.iterdir()) == ["config.json", "model.safetensors", "submission.csv"]


def test_a_config_that_cannot_be_written_puts_the_old_graph_back(onnx_export, main_study, tmp_path, monkeypatch):
    import errno

    from maskopt.errors import ExportError
    from maskopt.files import write_failed
    from maskopt.search.export import ExportConfig

    export = Path(shutil.copytree(onnx_export[0], tmp_path / "export"))
    before = tree_digest(export)

    def disk_full(config, model_dir):
        raise write_failed(Path(model_dir) / "config.json", OSError(errno.ENOSPC, "No space left on device"),
                           error=ExportError)

    monkeypatch.setattr(ExportConfig, "to_json", disk_full)  # after the new graph has moved in
    result = invoke("export-onnx", export, "--data", main_study.data, "--force", "--opset", "13",  # other bytes
                    "--cache-dir", main_study.cache_dir, "--quiet")
    assert_clean_error(result, "config.json: the disk is full (in ", "nothing was changed there")
    assert tree_digest(export) == before  # the old graph is back, beside the config that lists it
    assert [p.name for p in export.iterdir() if p.name.startswith(".")] == []


def test_export_onnx_never_replaces_a_file_the_export_did_not_write(export_copy, main_study):
    (export_copy / "model.onnx").write_text("my notes")
    before = tree_digest(export_copy)
    result = invoke("export-onnx", export_copy, "--data", main_study.data, "--force", "--quiet")
    assert_clean_error(result, "holds model.onnx, which the export there did not write (its config.json does not "
                               "list it); it is left as it is, and no graph was written. Move it away")
    assert tree_digest(export_copy) == before


def test_an_ensemble_of_several_image_sizes_is_refused(export_copy, main_study, tmp_path):
    folder = tmp_path / "ensemble"
    for name, size in (("member-a", 32), ("member-b", 48)):
        member = Path(shutil.copytree(export_copy, folder / name))
        config = json.loads((member / "config.json").read_text())
        (member / "config.json").write_text(json.dumps({**config, "image_size": size}))
    config = json.loads((export_copy / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({
        "format": "maskopt-export/1", "num_classes": 18, "class_names": config["class_names"], "tta": False,
        "members": [{"folder": "member-a", "weight": 1.0}, {"folder": "member-b", "weight": 1.0}]}))
    result = invoke("export-onnx", folder, "--data", main_study.data)
    assert_clean_error(result, "the ensemble's members take images of 32, 48 px, and an ONNX graph has one input "
                               "size: maskopt cannot write an ONNX graph of it yet (one file per image size is future "
                               "work). Such an ensemble predicts with the torch runtime only")
    assert not (folder / "model.onnx").exists()


# --- predict --runtime onnx: what it refuses ------------------------------------------------------------


@pytest.fixture
def onnx_copy(onnx_export, tmp_path) -> Path:
    """A copy of the export with a graph, for a test to spoil."""
    return Path(shutil.copytree(onnx_export[0], tmp_path / "export"))


def graph_at(size: int) -> bytes:
    """A valid maskopt graph of the main study's backbone, at another image size."""
    from maskopt.search.export.onnx import export_onnx
    from maskopt.search.train.models import build_model

    with tempfile.TemporaryDirectory() as folder:
        model = build_model("mobilenetv3_small_050", num_classes=18, head="multi")
        return export_onnx(model, Path(folder) / "model.onnx", image_size=size).read_bytes()


def with_external_data(good: bytes) -> bytes:
    """The graph with one weight's data in a file out of the export folder."""
    proto = onnx.load_model_from_string(good)
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    return proto.SerializeToString()


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda good: good[: len(good) // 2], "model.onnx is not an ONNX model (Error parsing message"),
    (lambda good: graph_at(48), "the graph must have one input 'images' of uint8 [batch, 3, 32, 32] (a dynamic "
                                "batch); its input is uint8 ['batch', 3, 48, 48]"),
    (with_external_data, "keeps its data in another file ('../../etc/passwd'); maskopt writes self-contained ONNX "
                         "files and reads no other file. Re-export it with maskopt"),
], ids=["truncated", "another input size", "external data out of the folder"])
def test_predict_refuses_a_hostile_graph(onnx_copy, main_study, tmp_path, spoil, message):
    path = onnx_copy / "model.onnx"
    path.write_bytes(spoil(path.read_bytes()))
    result = predict_cli(main_study, onnx_copy, tmp_path / "p.csv", "--runtime", "onnx")
    assert_clean_error(result, message)
    assert not (tmp_path / "p.csv").exists()


def changed_onnx(**changes):
    def change(config: dict) -> dict:
        return {**config, "onnx": {**config["onnx"], **changes}}

    return change


@pytest.mark.parametrize(("change", "message"), [
    (changed_onnx(file="../model.onnx"), "key 'onnx': 'file' must be the name of a .onnx file inside the export "
                                         "folder, got '../model.onnx'"),
    (changed_onnx(file="model\0.onnx"), "'file' must be the name of a .onnx file inside the export folder, got "
                                        "'model\\x00.onnx'"),
    (changed_onnx(file="other.onnx"), "key 'onnx': 'file' 'other.onnx' is missing or not a regular file in "),
    (changed_onnx(opset=99), "key 'onnx': 'opset' must be an integer 13..20, got 99"),
    (changed_onnx(weights="x"), "key 'onnx': unknown key(s) ['weights']; known: file, opset, preprocessing, check"),
    (changed_onnx(preprocessing={"image_size": 32}), "key 'onnx': 'preprocessing': 'resize' must be "
                                                     "'shorter_side_bilinear' (the only value this maskopt writes), "
                                                     "got None"),
    (changed_onnx(check={"images": 100}), "key 'onnx': 'check': 'max_abs_score_diff' must be a number from 0; "
                                          "it is missing"),
    (lambda config: {**config, "onnx": "model.onnx"}, "key 'onnx' must be a JSON object with 'file', 'opset', "
                                                      "'preprocessing', 'check'; got 'model.onnx'"),
], ids=["outside", "nul byte", "missing file", "opset", "unknown key", "preprocessing", "check",
        "not an object"])
def test_predict_refuses_a_hostile_onnx_record(onnx_copy, main_study, tmp_path, change, message):
    path = onnx_copy / "config.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    for runtime in ("torch", "onnx"):  # the whole config is checked, whichever runtime runs
        result = predict_cli(main_study, onnx_copy, tmp_path / "p.csv", "--runtime", runtime)
        assert_clean_error(result, message)


def test_predict_with_the_onnx_runtime_refuses_what_it_cannot_do(main_study, onnx_export, tmp_path):
    result = predict_cli(main_study, main_study.export, tmp_path / "p.csv", "--runtime", "onnx")
    assert_clean_error(result, f"{main_study.export} has no ONNX graph (no 'onnx' in its config.json): add one with "
                               f"maskopt export-onnx, or predict with --runtime torch")
    result = predict_cli(main_study, onnx_export[0], tmp_path / "p.csv", "--runtime", "onnx", "--no-tta")
    assert_clean_error(result, "was exported with tta=True, which is inside the graph: leave out --tta, or predict "
                               "with --runtime torch")
    result = predict_cli(main_study, onnx_export[0], tmp_path / "p.csv", "--runtime", "onnx", "--device", "cuda")
    assert_clean_error(result, "--runtime onnx runs on the CPU (onnxruntime's CPU provider); leave out --device")
    assert not (tmp_path / "p.csv").exists()


def test_an_unknown_runtime_is_refused_by_the_library(main_study, tmp_path):
    from maskopt.errors import ExportError
    from maskopt.search.export import predict

    with pytest.raises(ExportError, match=r"unknown `runtime` 'tensorrt'; choose torch or onnx"):
        predict(model=main_study.export, data=main_study.data, out=tmp_path / "p.csv", runtime="tensorrt")


def test_verification_rows_cross_a_batch_boundary():
    rows = onnx_module.verification_rows(140)
    assert len(rows) == 100 and rows[0] == 0 and rows[-1] == 139 and np.all(np.diff(rows) > 0)
    assert list(onnx_module.verification_rows(3)) == [0, 1, 2]
