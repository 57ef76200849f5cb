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
