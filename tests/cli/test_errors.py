"""Every failure a user can fix is one ``ldrop: error: ...`` line (exit status 2) that names the file, the
option or the cause, with the traceback behind ``LDROP_DEBUG=1``; a run that fails at setup leaves no folder."""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentError

from ldrop.cli import main
from ldrop.tasks import ClassificationTask
from ldrop.testing import fixtures
from tests.cli.common import QUICKSTART, SMALL, one_error_line
from tests.disks import mounted_tmpfs, read_only_folder

TINY_RUN = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


# ------------------------------------------------------------------------------- damaged checkpoints
def _damaged(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    data = good.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "head": data[:5000], "empty": b"",
                      "text": b"not a checkpoint\n"}[kind])  # head: torch's reader fails with an OSError
    return path


@pytest.mark.parametrize("kind", ["truncated", "head", "empty"])
@pytest.mark.parametrize("command", ["test", "fit", "export", "profile"])
def test_a_damaged_checkpoint_is_named_in_one_line(trained, tmp_path, capsys, kind, command):
    damaged = _damaged(kind, trained / "checkpoints" / "last.ckpt", tmp_path)
    args = {
        "test": ["test", "--config", QUICKSTART, *SMALL, "--ckpt_path", str(damaged),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")],
        "fit": ["fit", "--config", QUICKSTART, *SMALL, "--ckpt_path", str(damaged),
                "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")],
        "export": ["export", str(damaged), str(tmp_path / "exported")],
        "profile": ["profile", str(damaged), "--out", str(tmp_path / "p.json")],
    }[command]
    code = main(args)
    err = one_error_line(capsys)
    assert code == 2
    assert str(damaged) in err and "damaged or not a checkpoint" in err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "exported").exists()


@pytest.mark.parametrize("command", ["test", "fit", "predict"])
def test_a_checkpoint_holding_a_pickled_class_is_named_so_not_damaged(trained, tmp_path, capsys, command):
    # written by a subclass whose save_hyperparameters() stored the selector class (before ldrop kept it a spec)
    from ldrop.selectors import InputConditionedSelector

    state = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    state.setdefault("hyper_parameters", {})["selector"] = InputConditionedSelector
    pickled = tmp_path / "pickled.ckpt"
    torch.save(state, pickled)
    code = main([command, "--config", QUICKSTART, *SMALL, "--ckpt_path", str(pickled),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    line = one_error_line(capsys)
    assert code == 2 and f"checkpoint '{pickled}' holds a pickled Python object" in line
    assert "InputConditionedSelector" in line and "damaged" not in line
    assert "YourTask.load_from_checkpoint(path, weights_only=False) in Python, then save it again" in line


@pytest.mark.parametrize("command", ["test", "fit", "validate"])
def test_a_torch_file_that_is_not_a_lightning_checkpoint_is_one_line(tmp_path, capsys, command):
    foreign = tmp_path / "weights.ckpt"
    torch.save({"a": torch.zeros(2)}, foreign)
    code = main([command, "--config", QUICKSTART, *SMALL, "--ckpt_path", str(foreign),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    line = one_error_line(capsys)
    assert code == 2 and f"--ckpt_path {foreign}: not a checkpoint written by 'ldrop fit'" in line
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("command", ["fit", "test", "predict", "export"])
@pytest.mark.parametrize("folder", ["run", "export"])
def test_a_folder_given_as_the_checkpoint_is_named_with_its_option(trained, tmp_path, capsys, command, folder):
    checkpoint = trained / "checkpoints" / "last.ckpt"
    if folder == "export":
        path = tmp_path / "exported"
        assert main(["export", str(checkpoint), str(path), "--no-fit"]) == 0
        capsys.readouterr()
    else:
        path = trained
    args = (["export", str(path), str(tmp_path / "out")] if command == "export" else
            [command, "--config", QUICKSTART, *SMALL, "--ckpt_path", str(path), "--trainer.logger.init_args.save_dir",
             str(tmp_path / "logs")])
    assert main(args) == 2
    line = one_error_line(capsys)
    option = "CHECKPOINT" if command == "export" else "--ckpt_path"
    assert f"{option} {str(path)!r} is a folder" in line, line
    assert ("already an export" if folder == "export" else f"e.g. {checkpoint}") in line, line
    assert not (tmp_path / "logs").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["truncated", "head", "empty", "text"])
def test_load_model_and_adaptive_model_name_a_damaged_checkpoint(trained, tmp_path, kind):
    from ldrop import AdaptiveModel, load_model
    from ldrop._io import CheckpointError

    damaged = _damaged(kind, trained / "checkpoints" / "last.ckpt", tmp_path)
    for load in (load_model, AdaptiveModel.from_pretrained):
        with pytest.raises(CheckpointError, match=f"{damaged}.*damaged or not a checkpoint"):
            load(damaged)


# ------------------------------------------------------------------------------- a checkpoint saved on a GPU
def _saved_on_a_gpu(good: Path, folder: Path, monkeypatch) -> Path:
    """``good`` saved again with every tensor tagged ``cuda:0``, as a fit on a GPU saves it (on any machine)."""
    checkpoint = torch.load(good, map_location="cpu", weights_only=False)
    path = folder / "cuda.ckpt"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "_package_registry",
                      [(1, lambda obj: "cuda:0", lambda obj, location: None), *torch.serialization._package_registry])
        torch.save(checkpoint, path)
    with zipfile.ZipFile(path) as archive:
        assert b"cuda:0" in archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return path


@pytest.mark.parametrize("command", ["test", "fit"])
def test_a_checkpoint_saved_on_a_gpu_is_tested_and_resumed_on_the_cpu(trained, tmp_path, capsys, monkeypatch,
                                                                       command):
    cuda = _saved_on_a_gpu(trained / "checkpoints" / "last.ckpt", tmp_path, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also where CI has a GPU
    before = sorted(p.name for p in trained.rglob("*"))
    more = ["--sweep.budgets", "[1]"] if command == "test" else ["--trainer.max_epochs", "2"]
    code = main([command, "--config", QUICKSTART, *SMALL, *more, "--ckpt_path", str(cuda), "--trainer.accelerator",
                 "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    assert code in (0, None), capsys.readouterr().err[-3000:]
    run = next((tmp_path / "logs" / "ldrop").glob("version_*"))
    if command == "test":
        assert (run / "budget_sweep.csv").is_file()
    else:
        steps = [torch.load(c, "cpu", weights_only=True)["global_step"] for c in (cuda, run / "checkpoints" / "last.ckpt")]
        assert steps[1] == 2 * steps[0] > 0  # the second epoch trained on from the GPU's weights
    assert sorted(p.name for p in trained.rglob("*")) == before  # the shared run is left as it was


def test_a_cuda_checkpoint_loaded_to_its_device_on_a_cpu_is_named_so_not_damaged(trained, tmp_path, monkeypatch):
    from ldrop._io import CheckpointError, load_checkpoint_file

    cuda = _saved_on_a_gpu(trained / "checkpoints" / "last.ckpt", tmp_path, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CheckpointError, match="saved on a CUDA device") as caught:
        load_checkpoint_file(cuda, map_location=None)
    assert "damaged" not in str(caught.value) and "map_location" in str(caught.value)


# ------------------------------------------------------------------------------- another configuration
@pytest.mark.parametrize("option, differs", [
    (["--model.init_args.selector.init_args.hidden_dim", "64"], "selector.init_args.hidden_dim (32 in the checkpoint, 64 here)"),
    (["--data.init_args.num_classes", "4"], "head.weight [8, 32] in the checkpoint, [4, 32] here"),
    (["--model.init_args.backbone", "tiny:hubert"], "backbone ('tiny:wavlm' in the checkpoint, 'tiny:hubert' here)"),
], ids=["selector-width", "class-count", "backbone"])
def test_a_checkpoint_of_another_configuration_says_what_differs_in_one_line(trained, tmp_path, capsys, option,
                                                                              differs):
    code = main(["test", "--config", QUICKSTART, *SMALL, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *option])
    line = one_error_line(capsys)
    assert code == 2 and "do not fit this ClassificationTask" in line and differs in line
    assert not (tmp_path / "logs").exists()


def test_export_with_the_config_of_another_run_says_what_differs_and_writes_nothing(trained, tmp_path, capsys):
    import yaml

    config = yaml.safe_load((trained / "config.yaml").read_text())
    config["data"]["init_args"]["num_classes"] = 4  # another dataset: 4 classes, not the checkpoint's 8
    config["model"]["init_args"]["selector"]["init_args"]["hidden_dim"] = 64
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    code = main(["export", str(trained / "checkpoints" / "last.ckpt"), str(tmp_path / "out"), "--config", str(other)])
    line = one_error_line(capsys)
    assert code == 2 and "do not fit" in line and str(other) in line, line
    assert "labels (8 items in the checkpoint, 4 items here)" in line and "hidden_dim (32 in the checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_load_model_names_the_checkpoint_whose_weights_do_not_fit(trained, tmp_path):
    from ldrop import load_model
    from ldrop._io import CheckpointError

    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    checkpoint["ldrop_hyper_parameters"]["selector"]["init_args"]["hidden_dim"] = 64
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(CheckpointError, match=rf"{edited}: the checkpoint's weights do not fit this ClassificationTask "
                                              r"\(10 tensor\(s\) of another shape: selector.frame_proj.weight \[32, 32\] in "
                                              r"the checkpoint, \[64, 32\] here"):
        load_model(edited)


# ------------------------------------------------------------------------------- full disk, read-only output
def _fit_into(checkpoints: Path, save_dir: Path) -> list[str]:
    return ["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger.init_args.save_dir", str(save_dir),
            "--checkpoint.dirpath", str(checkpoints)]


def test_a_full_disk_during_fit_says_no_space_left_on_the_folder(tmp_path, capsys, monkeypatch):
    def full_disk_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 a part of the checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk_save)
    code = main(_fit_into(tmp_path / "ckpt", tmp_path / "logs"))
    line = one_error_line(capsys)
    assert code == 2 and f"no space left on {tmp_path / 'ckpt'}" in line
    assert not list((tmp_path / "ckpt").iterdir())  # no half-written checkpoint, no temporary


def test_a_real_full_disk_during_fit_says_no_space_left_on_the_folder(tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "disk", size="64k") as disk:
        code = main(_fit_into(disk / "ckpt", tmp_path / "logs"))
        line = one_error_line(capsys)
        assert code == 2 and f"no space left on {disk / 'ckpt'}" in line
        assert not list((disk / "ckpt").iterdir())


@pytest.mark.parametrize(("code", "filename", "says"), [
    (errno.EFBIG, "/runs/x/last.ckpt", "file too large for /runs/x (the file size limit, ulimit -f) (writing /runs/x/last.ckpt)"),
    (errno.EFBIG, None, "file too large (the file size limit, ulimit -f)"),
    (errno.ENOSPC, "/runs/x/last.ckpt", "no space left on /runs/x (writing /runs/x/last.ckpt)"),
    (errno.ENOSPC, None, "no space left on the device"),
], ids=["EFBIG", "EFBIG-no-path", "ENOSPC", "ENOSPC-no-path"])
def test_a_file_over_the_size_limit_is_a_disk_error_like_a_full_disk(code, filename, says):
    from ldrop.cli.errors import os_error_line

    assert os_error_line(OSError(code, os.strerror(code), filename)) == says


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG], ids=["ENOSPC", "EFBIG"])
def test_a_full_disk_during_an_export_names_the_folder_in_one_line(trained, tmp_path, capsys, monkeypatch, code):
    """safetensors' error on a full disk (or a file over ``ulimit -f``) is no OSError: its "(os error N)" is read."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    reason = {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large"}[code]

    def full_disk_save(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"part of the weights")
        raise SafetensorError(f"Error while serializing: I/O error: {reason} (os error {code})")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk_save)
    out = tmp_path / "d" / "model"
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(out), "--no-fit"]) == 2
    says = f"file too large for {out} (the file size limit, ulimit -f)" if code == errno.EFBIG else f"no space left on {out}"
    assert one_error_line(capsys) == f"ldrop: error: {says} (LDROP_DEBUG=1 shows the traceback)"
    assert list(tmp_path.iterdir()) == []  # no folder, no staging folder


def test_a_full_disk_during_an_onnx_export_names_the_folder_in_one_line(trained, tmp_path, capsys, monkeypatch):
    def full_disk_save(self, destination, *args, **kwargs):  # onnx.save's OSError names no file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", full_disk_save)
    out = tmp_path / "onnx"
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(out), "--format", "onnx", "--no-fit"]) == 2
    assert one_error_line(capsys) == f"ldrop: error: no space left on {out} (LDROP_DEBUG=1 shows the traceback)"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_the_tensorboard_writer_names_the_log_folder_without_a_thread_traceback(trained, tmp_path, capsys,
                                                                                                monkeypatch):
    """TensorBoard writes in a thread of its own, which keeps the error for the next flush (and Lightning's
    clean-up flushes again): one line naming the log folder, and no traceback of that thread."""
    import threading

    import tensorboard.summary.writer.record_writer as record_writer

    import ldrop.sweeps.callback as callback

    full, thread_errors = [], []
    real_write, real_add = record_writer.RecordWriter.write, callback.add_sweep_to_tensorboard

    def write(self, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    def add_sweep(*args, **kwargs):  # the sweep's plots are what fill the disk
        full.append(True)
        real_add(*args, **kwargs)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    monkeypatch.setattr(callback, "add_sweep_to_tensorboard", add_sweep)
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    code = main(["test", "--config", QUICKSTART, *SMALL, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    line = one_error_line(capsys)
    log_dir = tmp_path / "logs" / "ldrop" / "version_0"
    assert code == 2 and full and line == f"ldrop: error: no space left on {log_dir} (LDROP_DEBUG=1 shows the traceback)"
    assert thread_errors == [] and threading.excepthook == thread_errors.append  # put back as it was


def test_an_export_into_a_folder_that_cannot_be_written_fails_before_the_model_is_loaded(trained, tmp_path, capsys,
                                                                                           monkeypatch):
    import ldrop._io
    import ldrop.cli.export

    def read_only(path, suffix):
        raise OSError(errno.EROFS, "Read-only file system", str(path.parent / f".{path.name}.pid1.x7k2{suffix}"))

    monkeypatch.setattr(ldrop._io, "_temporary_beside", read_only)
    monkeypatch.setattr(ldrop.cli.export, "load_task_checkpoint", lambda *a: pytest.fail("loaded before the check"))
    (tmp_path / "ro").mkdir()
    out = tmp_path / "ro" / "model"
    assert main(["export", str(trained / "checkpoints" / "last.ckpt"), str(out)]) == 2
    assert one_error_line(capsys) == (f"ldrop: error: '{out}' cannot be made: Read-only file system: {tmp_path / 'ro'} "
                                      "(LDROP_DEBUG=1 shows the traceback)")


def test_a_read_only_predictions_output_fails_before_any_inference(trained, tmp_path, capsys, monkeypatch):
    from ldrop.tasks import LayerDropTask

    predicted = []
    monkeypatch.setattr(LayerDropTask, "predict_step", lambda self, *args, **kwargs: predicted.append(1))
    with read_only_folder(tmp_path / "ro") as folder:
        code = main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                     "--predictions.output", str(folder / "pred.jsonl")])
        line = one_error_line(capsys)
    assert code == 2 and line.startswith(f"ldrop: error: --predictions.output: cannot write {folder / 'pred.jsonl'}")
    assert line.endswith(f": {folder} (LDROP_DEBUG=1 shows the traceback)"), line  # not the probe file in it
    assert not predicted


@pytest.mark.parametrize("output", ["an-input", "other-audio"])
def test_predictions_never_overwrite_an_input_or_an_audio_file(trained, tmp_path, capsys, monkeypatch, output):
    from ldrop.tasks import LayerDropTask

    predicted = []
    monkeypatch.setattr(LayerDropTask, "predict_step", lambda self, *args, **kwargs: predicted.append(1))
    wav = fixtures.write_audio(tmp_path / "in" / "a.wav", 8000)
    target = wav if output == "an-input" else fixtures.write_audio(tmp_path / "b.flac", 8000, seed=1)
    before = target.read_bytes()
    code = main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false", "--trainer.default_root_dir",
                 str(tmp_path), "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--inputs",
                 str(tmp_path / "in"), "--predictions.output", str(target)])
    line = one_error_line(capsys)
    assert code == 2 and "--predictions.output" in line, line
    assert ("one of the --inputs" if output == "an-input" else "existing audio file") in line, line
    assert target.read_bytes() == before and not predicted


# ------------------------------------------------------------------------------- bad data, NaN loss
def _manifest_fit(tmp_path: Path, train_rows: list[tuple[str, str]], *extra: str,
                  val_rows: list[tuple[str, str]] = (("good.wav", "a"), ("good2.wav", "b"))) -> list[str]:
    fixtures.write_audio(tmp_path / "good.wav", 8000)
    fixtures.write_audio(tmp_path / "good2.wav", 8000, seed=1)
    for split, rows in (("train", train_rows), ("val", val_rows)):
        (tmp_path / f"{split}.csv").write_text("path,label\n" + "".join(f"{p},{t}\n" for p, t in rows))
    return ["fit", "--model", "ClassificationTask", "--data", "ManifestDataModule",
            "--data.init_args.train_manifest", str(tmp_path / "train.csv"),
            "--data.init_args.val_manifest", str(tmp_path / "val.csv"), "--data.init_args.batch_size", "2",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *TINY_RUN, *extra]


@pytest.mark.parametrize("bad", ["nan", "truncated"])
def test_bad_audio_is_one_line_naming_the_file_and_leaves_no_folder(tmp_path, capsys, bad):
    if bad == "nan":
        fixtures.write_nonfinite_wav(tmp_path / "bad.wav")
    else:
        fixtures.truncate_file(fixtures.write_audio(tmp_path / "bad.wav", 16000))
    code = main(_manifest_fit(tmp_path, [("good.wav", "a"), ("bad.wav", "b")]))
    line = one_error_line(capsys)
    assert code == 2 and f"{tmp_path / 'bad.wav'}: " in line and ("non-finite" in line or "truncated" in line)
    assert not (tmp_path / "logs").exists()  # neither version_0 nor logs/ldrop


@pytest.mark.parametrize("skip", [False, True])
def test_predict_inputs_of_the_generated_data_skip_a_bad_file_with_skip_bad_files(tmp_path, capsys, skip):
    good = fixtures.write_audio(tmp_path / "in" / "good.wav", 8000)
    fixtures.truncate_file(fixtures.write_audio(tmp_path / "in" / "cut.wav", 16000))
    out = tmp_path / "pred.jsonl"
    code = main(["predict", "--config", QUICKSTART, *SMALL, "--trainer.logger", "false", "--trainer.default_root_dir",
                 str(tmp_path), "--data.init_args.skip_bad_files", str(skip).lower(), "--inputs", str(tmp_path / "in"),
                 "--predictions.output", str(out)])
    if skip:
        assert code == 0 and [json.loads(r)["id"] for r in out.read_text().splitlines()] == [str(good)]
    else:
        line = one_error_line(capsys)
        assert code == 2 and f"{tmp_path / 'in' / 'cut.wav'}: the file is truncated" in line
        assert "skip_bad_files=True skips them" in line and not out.exists()


def test_an_empty_split_is_one_line(tmp_path, capsys):
    fixtures.write_nonfinite_wav(tmp_path / "bad.wav")
    code = main(_manifest_fit(tmp_path, [("good.wav", "a"), ("good2.wav", "b")], "--data.init_args.skip_bad_files",
                              "true", val_rows=[("bad.wav", "a")]))
    line = one_error_line(capsys)
    assert code == 2 and "split 'val' has no items left" in line
    assert not (tmp_path / "logs").exists()


def test_a_fast_dev_run_predict_failing_in_its_validation_fit_leaves_no_folder(tmp_path, capsys):
    # fast_dev_run swaps the logger for one without a folder: the prediction writer makes default_root_dir
    # before the selector is fitted on the (bad) validation data
    fixtures.write_nonfinite_wav(tmp_path / "bad.wav")
    args = _manifest_fit(tmp_path, [("good.wav", "a"), ("good2.wav", "b")], "--data.init_args.test_manifest",
                         str(tmp_path / "train.csv"), "--model.init_args.selector", "InputConditionedSelector",
                         "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "runs"),
                         val_rows=[("bad.wav", "a"), ("good2.wav", "b")])
    code = main(["predict", *args[1:]])
    line = one_error_line(capsys)
    assert code == 2 and f"{tmp_path / 'bad.wav'}: non-finite" in line and "split 'val'" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()


def test_a_transcript_missing_from_librispeech_is_one_line(tmp_path, capsys):
    tree = fixtures.make_librispeech_tree(tmp_path / "data", subsets=("train-clean-100", "dev-clean"), speakers=1,
                                          utterances=2)
    transcript = next((tree.root / "LibriSpeech" / "train-clean-100").rglob("*.trans.txt"))
    transcript.write_text(transcript.read_text().splitlines(keepends=True)[0])  # the second utterance: no text
    code = main(["fit", "--model", "CTCTask", "--data", "LibriSpeechDataModule", "--data.init_args.root",
                 str(tree.root), "--data.init_args.num_workers", "0", "--trainer.logger.init_args.save_dir",
                 str(tmp_path / "logs"), *TINY_RUN])
    line = one_error_line(capsys)
    assert code == 2 and ".flac: not in the transcript file" in line
    assert not (tmp_path / "logs").exists()


def test_a_tedlium_segment_past_the_end_of_its_talk_is_one_line(tmp_path, capsys):
    fixtures.make_tedlium_tree(tmp_path / "data", train_talks=1, segments_per_talk=2)
    root = tmp_path / "data" / "TEDLIUM_release-3"
    stm = next((root / "data" / "stm").glob("*.stm"))
    talk, channel, speaker, start, _end, *rest = stm.read_text().splitlines()[0].split(" ")
    stm.write_text(" ".join([talk, channel, speaker, start, "99.00", *rest]) + "\n" + stm.read_text())
    code = main(["fit", "--model", "CTCTask", "--data", "TedliumDataModule", "--data.init_args.root", str(root),
                 "--data.init_args.num_workers", "0", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
                 *TINY_RUN])
    line = one_error_line(capsys)
    assert code == 2 and f"{talk}.sph" in line and "ends past" in line


def test_a_nan_training_loss_is_one_line(tmp_path, capsys, monkeypatch):
    from ldrop.tasks import ClassificationTask

    monkeypatch.setattr(ClassificationTask, "task_loss",
                        lambda self, logits, frame_mask, batch: logits.sum() * float("nan"))
    code = main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.logger.init_args.save_dir",
                 str(tmp_path / "logs")])
    line = one_error_line(capsys)
    assert code == 2 and "non-finite training loss" in line and "Training stopped before updating the weights" in line


def test_a_fit_that_diverges_after_a_step_but_before_its_first_checkpoint_leaves_no_folder(tmp_path, capsys,
                                                                                          monkeypatch):
    from ldrop.tasks import ClassificationTask

    loss = ClassificationTask.task_loss  # finite at the first step, NaN from the second
    monkeypatch.setattr(ClassificationTask, "task_loss", lambda self, *args: loss(self, *args) * (
        float("nan") if self.training and self.global_step >= 1 else 1.0))
    (tmp_path / "logs").mkdir()  # a folder that was there before stays
    code = main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--trainer.max_steps", "3",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    line = one_error_line(capsys)
    assert code == 2 and "non-finite training loss" in line and "at step 1" in line, line
    assert (tmp_path / "logs").is_dir() and not list((tmp_path / "logs").iterdir())  # no ldrop/version_0


def test_a_backbone_neither_a_folder_nor_cached_offline_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code = main(["fit", "--config", QUICKSTART, *SMALL, *TINY_RUN, "--model.backbone", "nonexistent-folder",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    line = one_error_line(capsys)
    assert code == 2 and "backbone 'nonexistent-folder': no such local folder, and no such hub id in the local" in line
    assert "HF_HUB_OFFLINE" in line and not (tmp_path / "logs").exists()


# ------------------------------------------------------------------------------- command-line mistakes
@pytest.mark.parametrize("args, expected", [
    (["--model.init_args.nope", "3"], "--model.init_args.nope '3': ClassificationTask has no option 'nope'"),
    (["--trainer.max_epochs", "abc"], "--trainer.max_epochs 'abc': expected an int or null"),
    (["--model.init_args.selector", "InputConditonedSelector"],
     "--model.init_args.selector 'InputConditonedSelector': no such class; did you mean InputConditionedSelector?"),
    (["--model.predict_budget", "abc"], "--model.predict_budget 'abc': expected an int, a float or a dict"),
    (["--model.init_args.selector.init_args.mode", "both"],
     "--model.init_args.selector.init_args.mode 'both': expected one of 'topk', 'threshold'"),
    (["--trainer.max_epoch", "1"], "--trainer.max_epoch 1; did you mean --trainer.max_epochs?"),
    (["--predictions.output", "p.jsonl"], "--predictions.output applies to 'ldrop predict' only"),
    (["--model.class_path", "ClasificationTask"],
     "--model.class_path 'ClasificationTask': no such class; did you mean ClassificationTask?"),
    (["--model.selector.class_path", "InputConditionedSelectr"],
     "--model.selector.class_path 'InputConditionedSelectr': no such class; did you mean InputConditionedSelector?"),
    (["--model.class_path", "ldrop.tasks.ClasificationTask"],
     "ldrop.tasks has no class ClasificationTask; did you mean ldrop.tasks.ClassificationTask?"),
    (["--model.class_path", "ldrop_missing_pkg.tasks.PitchTask"],
     "No module named 'ldrop_missing_pkg' (put the folder that holds ldrop_missing_pkg on PYTHONPATH)"),
    (["--model.help", "ClassificationTsk"],
     "--model.help 'ClassificationTsk': no such class; did you mean ClassificationTask?"),
    (["--model.selector.help", "InputConditionedSelectr"],
     "--model.selector.help 'InputConditionedSelectr': no such class; did you mean InputConditionedSelector?"),
    (["--data.help", "ClassificationTask"], "--data.help 'ClassificationTask': not a class of ldrop.data"),
    (["--data.help", "SyntheticClasificationDataModule"],
     "no such class; did you mean SyntheticClassificationDataModule?"),
    (["--trainer.callbacks.help", "EarlyStoping"], "--trainer.callbacks.help 'EarlyStoping': no such class; did you "
                                                   "mean EarlyStopping?"),
    (["--model.help", "ldrop.tasks.ClasificationTask"],
     "ldrop.tasks has no class ClasificationTask; did you mean ldrop.tasks.ClassificationTask?"),
    (["--model.init_args.optimization.lrr", "0.1"],  # inside a typed group: 'expected a LayerDropTask or null'
     "--model.init_args.optimization.lrr: ClassificationTask has no option 'optimization.lrr' (its options: 'ldrop "
     "fit --model.help ClassificationTask')"),
    (["--config", "{model: {init_args: {budgets: {validaton: [1.0]}}}}"],  # ... in a config
     "--model.init_args.budgets.validaton: ClassificationTask has no option 'budgets.validaton'"),
], ids=["unknown-key", "wrong-type", "misspelt-class", "budget", "choice", "abbreviation", "predict-only",
        "misspelt-class-path", "misspelt-nested-class-path", "class-its-module-lacks", "module-not-importable",
        "misspelt-help-class", "misspelt-nested-help-class", "help-class-of-another-kind", "misspelt-help-datamodule",
        "misspelt-help-callback", "misspelt-help-dotted-path", "unknown-key-in-a-group", "unknown-key-in-a-config"])
def test_a_bad_argument_is_one_line_with_the_option_the_value_and_what_is_accepted(tmp_path, capsys, monkeypatch,
                                                                                   args, expected):
    argv = ["fit", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path), *args]
    assert main(argv) == 2
    assert expected in one_error_line(capsys)
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("LDROP_DEBUG", "1")  # the traceback, and jsonargparse's full text, on request
    with pytest.raises(Exception) as raised:
        main(argv)
    assert isinstance(raised.value.__cause__, ArgumentError)


class OwnTask(ClassificationTask):
    """A project's own task: ``--model.help`` takes it by its dotted path, not its name."""


def test_an_unknown_option_of_a_projects_own_task_names_the_help_by_its_dotted_path(tmp_path, capsys):
    argv = ["fit", "--config", QUICKSTART, *SMALL, "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--model.class_path", f"{__name__}.OwnTask", "--model.init_args.nope", "3"]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"OwnTask has no option 'nope' (its options: 'ldrop fit --model.help {__name__}.OwnTask')" in line, line
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the help it names shows the task's options
        main(["fit", "--model.help", f"{__name__}.OwnTask"])
    assert "--model.labels LABELS" in capsys.readouterr().out


def test_the_help_of_a_nested_class_without_its_owner_says_to_choose_the_owner_first(capsys):
    assert main(["fit", "--model.selector.help", "InputConditionedSelector"]) == 2
    assert "choose the class of --model first" in one_error_line(capsys)


@pytest.mark.parametrize("value", [[], ["EarlyExitConfig"]], ids=["no-value", "class-name"])
def test_a_nested_help_after_the_owners_class_says_it_follows_the_owners_help(capsys, value):
    # a config's help takes no value; after '--model CLASS' jsonargparse read it as a second --model
    assert main(["fit", "--model", "ClassificationTask", "--model.early_exit.help", *value]) == 2
    assert ("--model.early_exit.help follows --model.help, not --model: 'ldrop fit --model.help ClassificationTask "
            "--model.early_exit.help'") in one_error_line(capsys)
    with pytest.raises(SystemExit):  # the command it names shows the config's options
        main(["fit", "--model.help", "ClassificationTask", "--model.early_exit.help"])
    assert "--model.early_exit.policy" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["fit", "export"])
@pytest.mark.parametrize("content, expected", [
    (b"\xff\xfe\x00binary", "not UTF-8 text (byte 0xff at offset 0)"),
    (b"trainer:\n  max_epochs: [1\nmodel: x\n", "not valid YAML at line 3, column 6: expected ',' or ']'"),
    (b"- a\n- b\n", "expected a YAML mapping of sections"),
], ids=["binary", "syntax", "list"])
def test_a_config_file_that_is_not_yaml_is_one_line_naming_the_file_and_the_line(trained, tmp_path, capsys, command,
                                                                                   content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    args = (["fit", "--config", QUICKSTART, "--config", str(bad), "--trainer.default_root_dir", str(tmp_path / "runs")]
            if command == "fit" else ["export", str(trained / "checkpoints" / "last.ckpt"), str(tmp_path / "runs"),
                                      "--config", str(bad)])
    assert main(args) == 2
    line = one_error_line(capsys)
    assert f"{bad}: " in line and expected in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("form", ["separate", "equals"])
@pytest.mark.parametrize("option, content, expected", [
    ("--model", b"class_path: ClassificationTask\ninit_args:\n  labels: [a, b\n",
     "not valid YAML at line 4, column 1: expected ',' or ']'"),
    ("--data", b"\xff\xfe\x00binary", "not UTF-8 text (byte 0xff at offset 0)"),
], ids=["model-syntax", "data-binary"])
def test_a_yaml_file_given_as_an_options_value_that_is_not_yaml_is_one_line_naming_the_option_and_file(
        tmp_path, capsys, form, option, content, expected):
    bad = tmp_path / "section.yaml"
    bad.write_bytes(content)
    given = [option, str(bad)] if form == "separate" else [f"{option}={bad}"]
    assert main(["fit", "--config", QUICKSTART, *given, "--trainer.default_root_dir", str(tmp_path / "runs")]) == 2
    line = one_error_line(capsys)
    assert f"{option} {bad}: " in line and expected in line, line
    assert not (tmp_path / "runs").exists()


def test_a_plain_path_option_may_name_a_yaml_file_that_is_not_yaml_and_c_is_checked_as_config(tmp_path, capsys):
    output = tmp_path / "predictions.yaml"  # an earlier run's JSON lines: not one YAML document, and fine
    output.write_text('{"id": "a"}\n{"id": "b"}\n')
    with pytest.raises(SystemExit):
        main(["predict", "--config", QUICKSTART, "--predictions.output", str(output), "--print_config"])
    assert f"output: {output}" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00binary")
    assert main(["fit", "-c", str(bad)]) == 2
    assert f"-c {bad}: not a YAML config file: not UTF-8 text" in one_error_line(capsys)


def test_a_yaml_file_as_an_options_value_is_still_read_by_the_option(tmp_path, capsys):
    section = tmp_path / "selector.yaml"  # not a mapping of trainer:, model:, data: sections, and fine here
    section.write_text("class_path: RandomSelector\ninit_args:\n  train_mode: bernoulli\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--model.selector", str(section), "--print_config"])
    assert "class_path: ldrop.selectors.RandomSelector\n      init_args:\n        train_mode: bernoulli" in capsys.readouterr().out


def test_a_misspelt_class_path_deep_in_a_config_file_is_named_with_a_suggestion(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(Path(QUICKSTART).read_text().replace("class_path: InputConditionedSelector",
                                                           "class_path: InputConditionedSelectr"))
    assert "InputConditionedSelectr" in config.read_text()
    assert main(["fit", "--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]) == 2
    line = one_error_line(capsys)
    assert "selector.class_path 'InputConditionedSelectr': no such class; did you mean InputConditionedSelector?" in line
    assert not (tmp_path / "logs").exists()


def test_a_class_name_two_classes_share_is_one_line_naming_both(capsys):
    from ldrop.tasks import ClassificationTask

    namesake = type("ClassificationTask", (ClassificationTask,), {"__module__": __name__})  # a project's own
    try:
        assert main(["fit", "--config", QUICKSTART, "--print_config"]) == 2
        line = one_error_line(capsys)
    finally:
        del namesake
        gc.collect()
    assert ("--model: several classes are named ClassificationTask (ldrop.tasks.ClassificationTask, "
            f"{__name__}.ClassificationTask): give its full class path") in line, line


def test_own_commands_refuse_abbreviated_options(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--ou", str(tmp_path / "x")]) == 2
    assert "did you mean --out?" in one_error_line(capsys)


@pytest.mark.parametrize("args, expected", [
    (["export"], "the following arguments are required: checkpoint, out_dir"),
    (["export", "a"], "the following arguments are required: out_dir"),
    (["export", "a", "b", "--format", "xyz"], "--format: invalid choice: 'xyz'"),
    (["export", "a", "b", "--formt", "onnx"], "--formt onnx; did you mean --format?"),
    (["compare", "a", "--metrc", "acc"], "--metrc acc; did you mean --metric?"),
    (["compare", "a", "--oracles=yes"], "--oracles: ignored explicit argument 'yes'"),
    (["profile", "m.ckpt", "--dtype", "fp8"], "--dtype: invalid choice: 'fp8'"),
    (["profile", "m.ckpt", "--seconds", "abc"], "--seconds 'abc': expected a comma-separated list of numbers"),
    (["profile", "m.ckpt", "--sec", "1"], "unrecognized arguments: --sec 1"),
    (["profile", "--out", "p.json"], "give either MODEL (a checkpoint or exported folder) or --backbone NAME"),
], ids=["export-nothing", "export-no-out", "export-choice", "export-typo", "compare-typo", "compare-flag",
        "profile-choice", "profile-seconds", "profile-abbreviation", "profile-no-model"])
def test_own_commands_print_a_bad_argument_as_one_line(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    line = one_error_line(capsys)
    assert expected in line and "usage:" not in line
    assert not list(tmp_path.iterdir())


def test_the_debug_switch_shows_the_traceback_of_a_data_error(tmp_path, monkeypatch):
    from ldrop.data import AudioReadError

    fixtures.write_nonfinite_wav(tmp_path / "bad.wav")
    monkeypatch.setenv("LDROP_DEBUG", "1")
    with pytest.raises(AudioReadError, match="bad.wav"):
        main(_manifest_fit(tmp_path, [("good.wav", "a"), ("bad.wav", "b")]))


def test_the_run_folder_of_a_resumable_run_is_kept_after_a_failure(trained, tmp_path):
    run = tmp_path / "ldrop" / "version_0"
    shutil.copytree(trained, run)
    code = main(["fit", "--config", QUICKSTART, *SMALL, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                 "--model.init_args.selector.init_args.hidden_dim", "64"])
    assert code == 2 and (run / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------------- class names read at instantiation
ESC50_CONFIG = str(Path(QUICKSTART).parent / "data" / "esc50.yaml")


def _esc50_csv(root: Path) -> Path:
    return root / "ESC-50-master" / "meta" / "esc50.csv"


def _edit_esc50(lines: list[str], case: str) -> str:
    header, first, *rest = lines
    drop_target = [",".join(c for i, c in enumerate(line.split(",")) if i != 2) for line in lines]
    fields = first.split(",")
    return "\n".join({
        "no-target-column": drop_target,
        "empty": [],
        "headerless": [first, *rest],
        "non-integer-target": [header, ",".join([*fields[:2], "dog", *fields[3:]]), *rest],
        "blank-target": [header, ",".join([*fields[:2], "", *fields[3:]]), *rest],
        "one-target-two-categories": [*lines, ",".join([*fields[:3], "cat", *fields[4:]])],
    }[case]) + "\n"


@pytest.mark.parametrize("case, expected", [
    ("missing-root", "ESC-50 metadata meta/esc50.csv not found: {root}"),
    ("no-target-column", "columns ['target'] in {csv} not found"),
    ("empty", "columns ['category', 'filename', 'fold', 'target'] in {csv} not found"),
    ("headerless", "columns ['category', 'filename', 'fold', 'target'] in {csv} not found"),
    ("non-integer-target", "{csv}:2 ({clip}): fold and target must be integers"),
    ("blank-target", "{csv}:2 ({clip}): fold and target must be integers"),
    ("one-target-two-categories", "{csv}:{last} ({clip}): target 0 is category 'cat' here, 'dog' on an earlier row"),
], ids=["missing-root", "no-target-column", "empty", "headerless", "non-integer-target", "blank-target",
        "one-target-two-categories"])
def test_esc50_metadata_a_link_reads_is_reported_as_the_datamodule_says(tmp_path, capsys, case, expected):
    root = tmp_path / "data"
    fixtures.make_esc50_tree(root, targets=range(2), seconds=0.05, sample_rate=8000)
    lines = _esc50_csv(root).read_text().splitlines()
    if case == "missing-root":
        root = tmp_path / "nope"
    else:
        _esc50_csv(root).write_text(_edit_esc50(lines, case))
    code = main(["fit", "--config", ESC50_CONFIG, "--model.init_args.backbone", "tiny:wavlm", "--trainer.precision",
                 "32-true", "--trainer.fast_dev_run", "true", "--data.init_args.num_workers", "0",
                 "--data.init_args.root", str(root), "--trainer.default_root_dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    lines_out = [line for line in err.splitlines() if line.startswith("ldrop:")]
    assert code == 2 and len(lines_out) == 1 and "Traceback" not in err, err[-3000:]
    assert expected.format(root=root / "ESC-50-master", csv=_esc50_csv(root), clip=lines[1].split(",")[0],
                           last=len(lines) + 1) in lines_out[0]
    assert "compute_fn" not in err
    if "not found" in expected:  # a layout error keeps the layout it expected, on the lines after
        assert "Expected layout:" in err and "meta/esc50.csv   (header: filename,fold,target,category" in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("case, expected", [
    ("no-such-manifest", "manifest not found: {manifest}"),
    ("wrong-columns", "column(s) ['label', 'path'] in manifest {manifest} not found"),
], ids=["no-such-manifest", "wrong-columns"])
def test_a_manifest_a_link_reads_is_reported_as_the_datamodule_says(tmp_path, capsys, case, expected):
    manifest = tmp_path / "man" / ("nope.csv" if case == "no-such-manifest" else "train.csv")
    if case == "wrong-columns":
        fixtures.write_audio(tmp_path / "man" / "a.wav", 8000)
        manifest.write_text("file,class\na.wav,x\n")
    code = main(["fit", "--config", QUICKSTART, "--data.class_path", "ManifestDataModule",
                 "--data.init_args.train_manifest", str(manifest), "--trainer.fast_dev_run", "true",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    line = one_error_line_of(err)
    assert code == 2 and expected.format(manifest=manifest) in line and "compute_fn" not in err
    assert "Expected layout:" in err and "label     class name" in err
    assert not (tmp_path / "logs").exists()


def one_error_line_of(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ldrop:")]
    assert len(lines) == 1 and lines[0].startswith("ldrop: error: ") and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_a_bug_in_a_datamodule_a_link_reads_shows_its_traceback(tmp_path, monkeypatch):
    from ldrop.cli.errors import ConfigError
    from ldrop.data import ManifestDataModule

    monkeypatch.setattr(ManifestDataModule, "class_names", property(lambda self: {}["category"]))
    fixtures.write_audio(tmp_path / "a.wav", 8000)
    (tmp_path / "train.csv").write_text("path,label\na.wav,x\n")
    with pytest.raises(ConfigError, match=r"datamodule_labels\(data\) --> model.init_args.labels failed: KeyError"):
        main(["fit", "--config", QUICKSTART, "--data.class_path", "ManifestDataModule", "--data.init_args.train_manifest",
              str(tmp_path / "train.csv"), "--trainer.fast_dev_run", "true", "--trainer.logger", "false"])


# ------------------------------------------------------------------------------- ldrop compare: what it reads
SWEEP_ROWS = [{"method": "m", "budget_layers": k, "budget_fraction": k / 4, "executed_layers": float(k),
               "gflops_per_utterance": 1.0 + k, "acc": 0.5 + 0.1 * k, "acc_std": 0.01} for k in (1, 2, 4)]


def test_compare_with_a_metric_the_sweeps_lack_names_theirs_and_writes_nothing(tmp_path, capsys):
    from ldrop.sweeps import write_sweep

    write_sweep(SWEEP_ROWS, tmp_path / "run")
    assert main(["compare", str(tmp_path / "run"), "--metric", "nosuch", "--out", str(tmp_path / "cmp")]) == 2
    assert "--metric 'nosuch' is not a column of the sweep; metrics there: acc" in one_error_line(capsys)
    write_sweep([{**{k: v for k, v in r.items() if not k.startswith("acc")}, "method": "n", "wer": 1 - r["acc"]}
                 for r in SWEEP_ROWS], tmp_path / "wer")
    assert main(["compare", str(tmp_path / "run"), str(tmp_path / "wer"), "--out", str(tmp_path / "cmp")]) == 2
    assert ("the first sweep's metric 'acc' is not a column of the sweep of n (--metric picks another); metrics "
            "there: wer") in one_error_line(capsys)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("manifest, why", [
    ('{"files": 3}', "'files' is 3, not an object of file names and digests"),
    ('{"files": {}}', "'files' lists no file"),
    ('[1, 2]', "not a JSON object"),
    ('{"files": {"budget_sweep.png": "PNG"}}', "does not list budget_sweep.json"),
    ('{"files": {"budget_sweep.json": 1}}', "a digest in 'files' is not a string"),
    ('{"files": {"x": "0"}, "metrics": 3}', "'metrics' is not an object"),
], ids=["files-int", "files-empty", "list", "json-unlisted", "digest-int", "metrics-int"])
def test_compare_with_a_malformed_sweep_manifest_names_it_and_writes_nothing(tmp_path, capsys, manifest, why):
    from ldrop.sweeps import write_sweep

    write_sweep(SWEEP_ROWS, tmp_path / "run")
    png = hashlib.sha256((tmp_path / "run" / "budget_sweep.png").read_bytes()).hexdigest()
    (tmp_path / "run" / "sweep_manifest.json").write_text(manifest.replace("PNG", png))
    assert main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "cmp")]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "run" / "sweep_manifest.json") in line and why in line, line
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("name, content, why", [
    ("labels.csv", "path,label\na.wav,x\n", "no gflops_per_utterance column"),
    ("predictions.jsonl", '{"id": "a.wav", "output": "x"}\n', "a .jsonl file"),
    ("rows.json", '{"acc": 1}', "not a list of rows"),
    ("broken.json", "[{", "unreadable"),
    ("empty.csv", "", "no rows"),
], ids=["other-csv", "jsonl", "json-object", "broken-json", "empty-csv"])
def test_compare_of_a_file_that_is_no_sweep_says_so_without_blaming_an_option(tmp_path, capsys, name, content, why):
    (tmp_path / name).write_text(content)
    assert main(["compare", str(tmp_path / name), "--out", str(tmp_path / "cmp")]) == 2
    line = one_error_line(capsys)
    assert f"{str(tmp_path / name)!r} is not an ldrop budget sweep ({why}" in line
    assert "budget_sweep.csv" in line and "'ldrop test'" in line and "--metric" not in line
    assert not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------------------- ldrop test: the sweep's folder
@pytest.mark.parametrize("where", ["a-file", "below-a-file", "read-only"])
def test_a_sweep_directory_that_cannot_be_written_fails_before_any_budget_is_scored(trained, tmp_path, capsys,
                                                                                     monkeypatch, where):
    from ldrop.tasks import LayerDropTask

    tested = []
    monkeypatch.setattr(LayerDropTask, "test_step", lambda self, *args, **kwargs: tested.append(1))
    monkeypatch.setattr(LayerDropTask, "calibrate_on_validation_data", lambda self, *args: tested.append(1))
    (tmp_path / "ok.jsonl").write_text("{}\n")

    def run(directory: Path) -> int:
        return main(["test", "--config", QUICKSTART, *SMALL, "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--sweep.directory", str(directory)])

    if where == "read-only":
        with read_only_folder(tmp_path / "ro") as folder:
            code, line = run(folder / "sweep"), one_error_line(capsys)
        assert line.startswith(f"ldrop: error: --sweep.directory: cannot write the budget sweep in {folder / 'sweep'}: ")
    else:
        directory = tmp_path / "ok.jsonl" / ("sweep" if where == "below-a-file" else "")
        code, line = run(directory), one_error_line(capsys)
        assert (f"--sweep.directory: cannot write the budget sweep in {directory}: not a folder: "
                f"{tmp_path / 'ok.jsonl'}") in line
    assert code == 2 and not tested and not (tmp_path / "logs").exists()
    assert (tmp_path / "ok.jsonl").read_text() == "{}\n"
