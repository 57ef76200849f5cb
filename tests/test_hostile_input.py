"""Hostile or absurd input ends in a short, clean error through the real CLI: no traceback, no
memory blow-up. YAML alias bombs, huge values, duplicated CSV columns, datasets that cannot be
split into folds, decompression-bomb and garbage images."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from maskopt.cli import cli


def _search(space: Path, tmp_path: Path, *extra: str):
    return CliRunner().invoke(cli, ["search", "--space", str(space), "--storage", f"sqlite:///{tmp_path / 'x.db'}",
                                    "--trials", "1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                                    "--no-export", "--quiet", "--threads", "1", *extra])


def _assert_clean_failure(result, *needles: str, max_len: int = 1500):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    # A MaskoptError, turned into "Error: ..." by the CLI; anything else would be a bug.
    assert result.output.startswith("Error: "), result.output[:2000]
    assert len(result.output) < max_len, f"message of {len(result.output)} characters: {result.output[:300]}..."
    for needle in needles:
        assert needle in result.output, result.output


# --- search spaces ------------------------------------------------------------------------------


def _billion_laughs(levels: int = 9) -> str:
    """params.backbone holding 10**levels strings once its aliases are expanded."""
    items = ["&a0 [" + ",".join(["lol"] * 10) + "]"]
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "params:\n  backbone: [" + ", ".join(items) + "]\n"


def test_yaml_alias_bomb_is_refused(tmp_path, write_space):
    space = write_space(raw=_billion_laughs())
    start = time.monotonic()
    result = _search(space, tmp_path)
    assert time.monotonic() - start < 30
    _assert_clean_failure(result, str(space), "line 2", "alias", "not supported")
    assert not (tmp_path / "x.db").exists(), "the space is checked before the storage is touched"


def test_yaml_merge_key_alias_is_refused(tmp_path, write_space):
    space = write_space(raw="base: &b {lr: 0.01}\nparams:\n  <<: *b\n")
    _assert_clean_failure(_search(space, tmp_path), "alias", "merge keys")


@pytest.mark.parametrize("raw, needle", [
    ("params:\n  loss: " + "k" * 100_000 + "\n", "params.loss"),
    ("params:\n  backbone: " + "b" * 100_000 + "\n", "params.backbone"),
    ("params:\n  lr: [" + ", ".join(["[" + ",".join(["x" * 1000] * 100) + "]"] * 100) + "]\n", "params.lr[0]"),
    ("params:\n  " + "k" * 1000 + ": 1\n", "unknown key"),
    ("study:\n  folds: " + "1" * 5000 + "\n", "cannot read"),
    ("study:\n  folds: 2024-13-45\n", "cannot read"),
    ("params:\n  backbone: " + "[" * 20_000 + "]" * 20_000 + "\n", "too deeply"),
], ids=["long-choice", "long-backbone", "big-list", "long-key", "5000-digit-int", "bad-date", "deep-nesting"])
def test_huge_or_odd_values_give_short_messages(tmp_path, write_space, raw, needle):
    space = write_space(raw=raw)
    _assert_clean_failure(_search(space, tmp_path), str(space), needle, max_len=600)


def test_non_utf8_space_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_bytes(b"params:\n  loss: \xff\xfe\n")
    _assert_clean_failure(_search(space, tmp_path), "UTF-8")


# Spaces that would fail (or silently misread) every trial. Each would otherwise run: the data is given.
SEARCHED_LR = "params:\n  lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n"
EVERY_TRIAL_FAILS = {
    "tpe gamma": ("study:\n  sampler: {name: tpe, gamma: 1}\n", "study.sampler.gamma: got 1",
                  "a space file cannot give"),
    "constraints_func": ("study:\n  sampler: {name: tpe, constraints_func: 1}\n", "study.sampler.constraints_func",
                         "n_startup_trials, n_ei_candidates"),
    "fails when sampling": ("study:\n  sampler: {name: cmaes, popsize: 1}\n" + SEARCHED_LR,
                            "study.sampler: got {'name': 'cmaes', 'popsize': 1}", "with popsize: 1 it fails"),
    "negative startup": ("study:\n  sampler: {name: tpe, n_startup_trials: -1}\n",
                         "study.sampler.n_startup_trials: got -1", "at least 0"),
    "negative warmup steps": ("study:\n  pruner: {name: median, n_warmup_steps: -2}\n",
                              "study.pruner.n_warmup_steps: got -2", "at least 0"),
    "reduction factor 1": ("study:\n  pruner: {name: hyperband, reduction_factor: 1}\n",
                           "study.pruner.reduction_factor: got 1", "at least 2"),
    "study list": ("study: []\n", "study: got []", "leave study: out or write study: {}"),
    "params list": ("params: []\n", "params: got []", "leave params: out or write params: {}"),
    "negative seed": ("study:\n  seed: -1\n", "study.seed: got -1", "from 0 to 4294967295"),
    "seed 2**32": ("study:\n  seed: 4294967296\n", "study.seed: got 4294967296", "from 0 to 4294967295"),
    "endless warm-up": ("study:\n  warmup_epochs: 1.0e+308\n", "study.warmup_epochs: got 1e+308",
                        "0 to study.epochs (10)"),
    "batch of one": ("params:\n  batch_size: 1\n", "params.batch_size: got 1", "BatchNorm cannot train on one"),
    "choice of one": ("params:\n  batch_size: [16, 1]\n", "params.batch_size[1]: got 1", "BatchNorm"),
    "lr twice": ("params:\n  lr: 0.1\n  loss: ce\n  lr: 0.2\n", "line 4: the key 'lr' is given twice",
                 "first on line 2"),
    "study twice": ("study:\n  epochs: 2\nparams: {}\nstudy:\n  epochs: 3\n", "line 4: the key 'study'",
                    "first on line 1"),
}


@pytest.mark.parametrize("case", list(EVERY_TRIAL_FAILS))
def test_a_space_that_would_fail_every_trial_is_refused_before_anything_is_written(tmp_path, write_space, demo_data,
                                                                                   case):
    text, *needles = EVERY_TRIAL_FAILS[case]
    space = write_space(raw=text)
    _assert_clean_failure(_search(space, tmp_path, "--data", str(demo_data)), f"Error: {space}", *needles)
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "cache").exists()


def test_a_rerun_at_the_largest_seed_and_worker_index_runs(tmp_path, write_space, space_dict, demo_data, cache_dir):
    """The sampler's seed (seed + 1000 x worker index + finished trials) wraps at numpy's 2**32."""
    import optuna

    from maskopt.search.study.runner import MAX_WORKER_INDEX

    space = write_space(raw=space_dict(study={"seed": 2**32 - 1, "data": str(demo_data)},
                                       params={"lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}}))
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for total in (1, 2):
        result = CliRunner().invoke(cli, ["search", "--space", str(space), "--storage", url, "--trials", str(total),
                                          "--device", "cpu", "--cache-dir", str(cache_dir), "--no-export", "--quiet",
                                          "--threads", "1", "--worker-index", str(MAX_WORKER_INDEX)])
        assert result.exit_code == 0, result.output + repr(result.exception)
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].params["lr"] != trials[1].params["lr"], "the rerun's sampler was seeded anew"


def test_sampler_seeds_stay_below_2_32_and_apart_at_the_largest_seed_and_worker_index():
    import optuna

    from maskopt.search.study.runner import MAX_WORKER_INDEX, sampler_seed

    study = optuna.create_study()
    seeds = set()
    for _ in range(3):  # 0, 1 and 2 finished trials
        for worker in (0, 1, MAX_WORKER_INDEX - 1, MAX_WORKER_INDEX):
            seed = sampler_seed(2**32 - 1, worker, study)
            assert 0 <= seed < 2**32
            seeds.add(seed)
        study.tell(study.ask(), 0.5)
    assert len(seeds) == 12


@pytest.mark.parametrize("option, value", [("--worker-index", "100000000"), ("--worker-index", "4294967"),
                                           ("--worker-index", "-1"), ("--seed", "-1"), ("--seed", "4294967296")])
def test_worker_index_or_seed_out_of_range_is_a_usage_error(tmp_path, write_space, demo_data, option, value):
    result = _search(write_space(), tmp_path, "--data", str(demo_data), option, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.db").exists()


def test_the_library_refuses_a_seed_or_worker_index_out_of_range_before_anything_is_written(tmp_path, write_space,
                                                                                             demo_data):
    import maskopt
    from maskopt.errors import MaskoptError, SpaceError

    common = dict(trials=1, data=demo_data, storage=f"sqlite:///{tmp_path / 'x.db'}", cache_dir=tmp_path / "cache",
                  export=False, quiet=True)
    with pytest.raises(SpaceError, match=r"^`seed`: got -1; expected a whole number from 0 to 4294967295"):
        maskopt.search(write_space(), seed=-1, **common)
    with pytest.raises(MaskoptError, match=r"^`worker_index` must be from 0 to 4294966, got 4294967$"):
        maskopt.search(write_space(), worker_index=4_294_967, **common)
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "cache").exists()


# --- datasets -----------------------------------------------------------------------------------


def test_csv_with_a_duplicated_column(tmp_path):
    for name in ("a/1.png", "b/2.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("path,label,label\na/1.png,a,b\nb/2.png,b,a\n")
    for args in (["eda", str(csv_path)], ["eda", str(tmp_path), "--layout", "csv"]):
        _assert_clean_failure(CliRunner().invoke(cli, args), str(csv_path), "'label'", "more than once")


def test_thousand_classes_of_one_image_cannot_make_folds(tmp_path, write_space):
    data = tmp_path / "data"
    rows = ["path,label"]
    for i in range(1000):
        (data / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(data / f"{i}.png")
        rows.append(f"{i}.png,class{i}")
    (data / "data.csv").write_text("\n".join(rows) + "\n")
    space = write_space(study={"data": str(data / "data.csv"), "folds": 5})
    _assert_clean_failure(_search(space, tmp_path), "5 folds", "1000 classes", "at most 1", "fewer folds")
    assert not (tmp_path / "x.db").exists(), "the folds are checked before the storage is touched"


# --- eda on bad images --------------------------------------------------------------------------


def _png_bomb(path: Path, side: int) -> Path:
    """A real 1-bit ``side`` x ``side`` PNG of zeros: kilobytes on disk, ``side**2`` pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_eda_names_every_unreadable_image(tmp_path):
    data = tmp_path / "data"
    for name in ("cat/ok.png", "dog/ok.png"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6)).save(data / name)
    bad = [
        _png_bomb(data / "cat" / "bomb.png", 20_000),  # over twice Pillow's limit: DecompressionBombError
        _png_bomb(data / "dog" / "warn.png", 10_000),  # over the limit: only a warning, but 100M pixels
        data / "dog" / "garbage.jpg",
        data / "cat" / "empty.jpeg",
    ]
    bad[2].write_bytes(b"\x13\x37 not a jpeg at all " * 50)
    bad[3].write_bytes(b"")
    assert bad[0].stat().st_size < 200_000, "small on disk"
    for args in ([], ["--out", str(tmp_path / "eda")], ["--json"]):
        result = CliRunner().invoke(cli, ["eda", str(data), *args])
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert "Traceback" not in result.output
        flat = " ".join(result.output.split())  # notes wrap at 80 columns
        assert "4 image(s) cannot be opened" in flat
        for path in bad:
            assert f"unreadable image {path}" in flat, (path, flat)
        assert "decompression bomb" in flat
    assert (tmp_path / "eda" / "samples.png").is_file()
