"""Several workers per GPU (`workers_per_gpu`): which GPU each worker gets, what it may see, the
shared decoded-image cache, the setting's checks and the record of who shared a trial's GPU.

No GPU is needed: the placement is a pure function, the cache is shared on the host, and the
record is written by the real objective on the CPU. An out-of-memory error in one worker stays in
its trial: `test_search.py::test_out_of_memory_is_retried_at_half_batch_then_recorded` fails the
trial that runs out twice and runs the next; the workers are separate processes.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import logged_lines
from optuna.trial import TrialState

import maskopt
from maskopt.cli import cli
from maskopt.commands import search as search_command
from maskopt.errors import MaskoptError, SpaceError
from maskopt.search.data.dataset import load_dataset
from maskopt.search.data.prepared import prepare_data
from maskopt.search.report import report
from maskopt.search.space import parse_space
from maskopt.search.space.schema import MAX_WORKERS_PER_GPU
from maskopt.search.study.record import DeviceShare, StudyRecord, TrialRecord
from maskopt.search.study.runner import MAX_WORKER_INDEX, run_search
from maskopt.search.study.workers import gpu_of_worker, run_workers, worker_environments

# --- which GPU each worker gets --------------------------------------------------------------------


@pytest.mark.parametrize("per_gpu", [1, 2, 4])
@pytest.mark.parametrize("gpus", [1, 2, 3, 8])
def test_k_times_the_gpus_gives_every_gpu_k_consecutive_workers(per_gpu, gpus):
    placed = [gpu_of_worker(i, workers_per_gpu=per_gpu, gpus=gpus) for i in range(per_gpu * gpus)]
    assert Counter(placed) == {gpu: per_gpu for gpu in range(gpus)}
    assert placed == sorted(placed)  # workers 0..K-1 on the first GPU, and so on
    # More workers than that start again at the first GPU.
    assert gpu_of_worker(per_gpu * gpus, workers_per_gpu=per_gpu, gpus=gpus) == 0


def test_placement_when_the_workers_are_not_k_times_the_gpus():
    def placed(workers, per_gpu, gpus):
        return [gpu_of_worker(i, workers_per_gpu=per_gpu, gpus=gpus) for i in range(workers)]

    assert placed(4, 1, 2) == [0, 1, 0, 1]  # one per GPU, round the GPUs: as before workers_per_gpu
    assert placed(3, 2, 2) == [0, 0, 1]  # the last GPU gets the remainder
    assert placed(2, 4, 2) == [0, 0]  # fewer than K x GPUs: the second GPU gets none
    assert placed(5, 2, 2) == [0, 0, 1, 1, 0]  # more: the first GPU gets a third


def test_each_worker_sees_only_its_own_gpu():
    assert worker_environments(3, workers_per_gpu=2, gpus=2) == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    # Without GPUs nothing is added: the workers train on the CPU.
    assert worker_environments(2, workers_per_gpu=4, gpus=0) == [{}, {}]


def test_workers_keep_to_the_gpus_this_process_was_given():
    # Started with CUDA_VISIBLE_DEVICES=2,3, the machine's GPUs 0 and 1 belong to someone else.
    envs = worker_environments(4, workers_per_gpu=2, gpus=2, visible="2, 3")
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["2", "2", "3", "3"]
    uuids = worker_environments(2, workers_per_gpu=1, gpus=2, visible="GPU-aa11,GPU-bb22")
    assert [env["CUDA_VISIBLE_DEVICES"] for env in uuids] == ["GPU-aa11", "GPU-bb22"]


# --- the decoded images are shared, not copied per worker --------------------------------------------


def mapped_file(address: int) -> str:
    """The file mapped at ``address`` in this process ('' for anonymous memory)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else ""
    raise AssertionError(f"{address:#x} is not mapped")


def test_two_prepared_datasets_read_the_same_cache_file(demo_data, tmp_path):
    # Two PreparedData on one cache, as two worker processes hold them: both tensors are the cache
    # file's pages (the kernel's page cache, one copy for every process), not private copies.
    dataset = load_dataset(demo_data)
    first, second = (prepare_data(dataset, image_sizes=[16], cache_dir=tmp_path) for _ in range(2))
    a, b = first.images(16), second.images(16)
    (cache_file,) = tmp_path.glob("*.npy")
    assert mapped_file(a.data_ptr()) == mapped_file(b.data_ptr()) == str(cache_file)
    assert a.shape == (len(dataset), 3, 16, 16) and torch.equal(a, b)
    assert torch.equal(a, torch.from_numpy(np.load(cache_file)))

    # Copy-on-write: a write (training makes none) stays in this map; the file and the others keep the pixels.
    pixels = b[0].clone()
    a[0] = 255 - a[0]
    assert torch.equal(b[0], pixels) and np.array_equal(np.load(cache_file)[0], pixels.numpy())


def test_with_persons_excluded_the_rows_kept_are_a_private_copy(demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    broken = next(p for p in sorted((data / "train" / "images").rglob("*.jpg")) if not p.name.startswith("."))
    broken.write_bytes(b"not an image")
    prepared = prepare_data(load_dataset(data, exclude_broken=True), image_sizes=[16], cache_dir=tmp_path / "cache",
                            exclude_broken=True)
    images = prepared.images(16)
    assert len(images) == len(prepared.dataset) == len(prepared.rows) < len(prepared.source_paths)
    assert not mapped_file(images.data_ptr()).endswith(".npy")


# --- the setting's checks ----------------------------------------------------------------------------


def test_the_cli_refuses_workers_per_gpu_out_of_range(write_space):
    space = write_space()
    for bad in ("0", "17"):
        result = CliRunner().invoke(cli, ["search", "--space", str(space), "--workers-per-gpu", bad])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"Invalid value for '--workers-per-gpu': {bad} is not in the range 1<=x<=16" in result.output
    assert search_command.MAX_WORKERS_PER_GPU == MAX_WORKERS_PER_GPU  # the CLI's copy (it may not import torch)


@pytest.mark.parametrize("bad", [0, 17, True, "2"])
def test_the_space_key_is_checked(write_space, bad):
    space = write_space(study={"workers_per_gpu": bad})
    result = CliRunner().invoke(cli, ["search", "--space", str(space)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "study.workers_per_gpu: got" in result.output
    expected = "a whole number from 1 to 16" if bad in (0, 17) else "a whole number"
    assert expected in result.output


def test_the_space_key_defaults_to_one_and_the_python_face_checks_its_argument(space_dict):
    assert parse_space(space_dict()).study.workers_per_gpu == 1
    assert parse_space(space_dict(study={"workers_per_gpu": 4})).study.workers_per_gpu == 4
    with pytest.raises(SpaceError, match=r"`workers_per_gpu`: got 0; expected a whole number from 1 to 16"):
        maskopt.search(parse_space(space_dict()), trials=1, workers_per_gpu=0)


def test_workers_per_gpu_is_not_part_of_what_a_study_trains(space_dict):
    # Machines of one study may share their GPUs differently, and a study stored before the
    # setting existed lacks it: either resumes.
    study = optuna.create_study(direction="maximize")
    record = StudyRecord.of(study)
    record.bind_space(parse_space(space_dict(study={"workers_per_gpu": 1})))
    record.bind_space(parse_space(space_dict(study={"workers_per_gpu": 4})))
    stored = study.user_attrs["maskopt_space"]
    del stored["study"]["workers_per_gpu"]
    old = optuna.create_study(direction="maximize")
    old.set_user_attr("maskopt_space", stored)
    StudyRecord.of(old).bind_space(parse_space(space_dict(study={"workers_per_gpu": 2})))
    with pytest.raises(SpaceError, match="different search space"):
        record.bind_space(parse_space(space_dict(study={"workers_per_gpu": 4, "epochs": 2})))


# --- the record of who shared a trial's GPU --------------------------------------------------------


def trial_with_share(value) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={"device_share": value})


def test_device_share_reads_back_checked():
    assert TrialRecord.of(trial_with_share({"gpu": "1", "workers": 2})).device_share == DeviceShare("1", 2)
    for bad in (None, "1", {"gpu": 1, "workers": 2}, {"gpu": "1", "workers": 0}, {"gpu": "1", "workers": True},
                {"gpu": "", "workers": 2}, {"gpu": "x" * 101, "workers": 2}, {"workers": 2}):
        assert TrialRecord.of(trial_with_share(bad)).device_share is None, bad


def test_the_objective_records_the_share_and_the_report_shows_it(space_dict, demo_data, cache_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    space = parse_space(space_dict(study={"data": str(demo_data)}))
    run_search(space, trials=1, storage=url, device="cpu", cache_dir=cache_dir, threads=1, heartbeat_interval=None,
               device_share=DeviceShare("3", 2), quiet=True)
    alone = parse_space(space_dict(study={"data": str(demo_data), "name": "alone"}))
    run_search(alone, trials=1, storage=url, device="cpu", cache_dir=cache_dir, threads=1, heartbeat_interval=None,
               quiet=True)
    (shared,) = StudyRecord.open(url, "tiny").trials()
    (single,) = StudyRecord.open(url, "alone").trials()
    assert shared.state == TrialState.COMPLETE and shared.device_share == DeviceShare("3", 2)
    assert single.device_share is None

    page = report(storage=url, study="tiny", out=tmp_path / "r.html").read_text()
    assert 'title="trained on GPU 3, given to 2 workers of its machine">GPU 3 ×2</span>' in page
    assert "×2</span>" not in report(storage=url, study="alone", out=tmp_path / "a.html").read_text()


# --- workers in real processes -----------------------------------------------------------------------


@pytest.mark.slow  # two spawned worker processes
def test_without_a_gpu_the_setting_is_ignored_and_a_failed_worker_stops_no_other(space_dict, demo_data, cache_dir,
                                                                                  tmp_path):
    # The second worker's index is past the largest allowed, so it exits at once with status 1;
    # the first runs the study to its total all the same, and the parent reports the failure.
    url = f"sqlite:///{tmp_path / 'w.db'}"
    space = parse_space(space_dict(study={"data": str(demo_data), "workers_per_gpu": 2}))
    with logged_lines() as lines, pytest.raises(MaskoptError, match=r"1 of 2 workers failed \(exit codes \[0, 1\]\)"):
        run_workers(space, workers=2, trials=2, storage=url, device="cpu", threads=1, cache_dir=cache_dir,
                    worker_index=MAX_WORKER_INDEX, workers_per_gpu=3, heartbeat_interval=None, checkpoints=False)
    assert "`workers_per_gpu` 3 is ignored: no GPU is used, and the 2 workers share the CPU's cores" in lines
    trials = StudyRecord.open(url, "tiny").trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.device_share is None for t in trials)
    # The stored space keeps the space's setting; the argument overrode it for this run only.
    assert StudyRecord.open(url, "tiny").space.study.workers_per_gpu == 2
