"""Data that used to hang, crash or be silently misread, through the real command line: FIFOs and
devices where files belong, a full or read-only cache disk, repeated rows, one image under two
labels, 16-bit and EXIF-rotated photos, file names that are not UTF-8, absurd ages, empty class
folders, unread columns, and names that hold terminal escape sequences.

Commands that could block or die of a signal before the fixes run in a subprocess with a timeout,
so that a hang fails the test instead of stopping the suite.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_trees import write_competition

from maskopt.cli import cli
from maskopt.errors import DataError
from maskopt.search.data.cache import cache_key, decode_image, load_images
from maskopt.search.data.dataset import load_dataset, load_eval

PEOPLE = (("000001", "male", 25), ("000002", "female", 45), ("000003", "male", 33))
ROW = {person: f"{person},{gender},Asian,{age},{person}_{gender}_Asian_{age}" for person, gender, age in PEOPLE}
HEADER = "id,gender,race,age,path"
ESC = "\x1b"


def run_maskopt(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command in its own process: a hang fails the test (TimeoutExpired), and a fatal
    signal (SIGBUS) ends only that process."""
    return subprocess.run([sys.executable, "-m", "maskopt", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def search_args(space: Path, tmp_path: Path, cache_dir: Path, *extra: str) -> list[str]:
    return ["search", "--space", str(space), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--trials", "1",
            "--device", "cpu", "--cache-dir", str(cache_dir), "--no-export", "--quiet", "--threads", "1", *extra]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def flat(text: str) -> str:
    """``text`` with its line breaks and runs of spaces made single spaces (eda wraps notes)."""
    return " ".join(text.split())


def assert_clean_error(result, *needles: str) -> str:
    """``result`` (CliRunner's, or a finished subprocess) failed with ``Error: ...`` holding every
    needle (line breaks aside), without a traceback."""
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    exit_code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert exit_code == 1, output
    assert "Traceback" not in output and "Error: " in output, output
    for needle in needles:
        assert needle in flat(output), output
    return output


def train_csv(root: Path, *rows: str) -> Path:
    (root / "train" / "train.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return root


def save(path: Path, colour=(90, 140, 200), size=(8, 8), **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, **kwargs)
    return path


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


# --- FIFOs and devices where files belong -------------------------------------------------------


def test_a_fifo_as_a_photo_is_named_not_waited_on(tmp_path, write_space):
    data = write_competition(tmp_path / "data", PEOPLE)
    photo = fifo(data / "train" / "images" / "000002_female_Asian_45" / "mask3.jpg")

    eda = run_maskopt("eda", str(data))  # it blocked forever in Image.open
    assert eda.returncode == 0, eda.stderr
    assert f"{photo} is a FIFO, not an image file" in flat(eda.stdout)
    assert "2 persons, 14 images" in eda.stdout, "the person is left out, and said so"

    space = write_space(study={"data": str(data)})
    search = run_maskopt(*search_args(space, tmp_path, tmp_path / "cache"))  # it blocked while caching
    assert_clean_error(search, f"{photo} is a FIFO, not an image file", "--exclude-broken")
    assert not (tmp_path / "x.db").exists(), "refused before the storage was touched"


@pytest.mark.parametrize("kind", ["FIFO", "character device"])
def test_data_that_is_a_fifo_or_a_device(tmp_path, write_space, kind):
    data = fifo(tmp_path / "data") if kind == "FIFO" else Path("/dev/zero")
    message = f"{data} is a {kind}, not a dataset folder or CSV file"
    assert_clean_error(invoke("eda", str(data)), message)
    space = write_space()
    assert_clean_error(invoke(*search_args(space, tmp_path, tmp_path / "cache", "--data", str(data))), message)


def _fifo_in(tmp_path: Path, where: str) -> tuple[list[str], str]:
    """A dataset with a FIFO or a device ``where``; the eda arguments and the message expected."""
    if where == "train.csv":
        data = write_competition(tmp_path / "data", PEOPLE)
        return [str(data)], f"{fifo(data / 'train' / 'train.csv')} is a FIFO, not a CSV file"
    if where == "corrections":
        data = write_competition(tmp_path / "data", PEOPLE)
        return [str(data), "--corrections", "/dev/zero"], "/dev/zero is a character device, not a CSV file"
    if where == "csv image":
        save(tmp_path / "a.png")
        fifo(tmp_path / "b.png")
        (tmp_path / "data.csv").write_text("path,label\na.png,x\nb.png,y\n")
        return [str(tmp_path / "data.csv")], f"line 3: image {tmp_path / 'b.png'} is a FIFO, not an image file"
    if where == "class folder":
        save(tmp_path / "cats" / "a.png")
        save(tmp_path / "dogs" / "b.png")
        return [str(tmp_path)], f"{fifo(tmp_path / 'dogs' / 'c.jpg')} is a FIFO, not an image file"
    raise AssertionError(where)


@pytest.mark.parametrize("where", ["train.csv", "corrections", "csv image", "class folder"])
def test_a_fifo_or_device_anywhere_in_a_dataset(tmp_path, where):
    args, message = _fifo_in(tmp_path, where)
    assert_clean_error(invoke("eda", *args), message)


def test_eval_images_and_info_csv_that_are_fifos(tmp_path):
    save(tmp_path / "eval" / "images" / "a.jpg")
    fifo(tmp_path / "eval" / "images" / "b.jpg")
    (tmp_path / "eval" / "info.csv").write_text("ImageID,ans\na.jpg,0\nb.jpg,0\n")
    with pytest.raises(DataError, match=r"line 3: .*b\.jpg is a FIFO, not an image file"):
        load_eval(tmp_path)
    fifo(tmp_path / "eval" / "info.csv")
    with pytest.raises(DataError, match=r"info\.csv is a FIFO, not a CSV file"):
        load_eval(tmp_path)


def test_decoding_refuses_a_fifo_without_waiting(tmp_path):
    # A FIFO swapped in after the dataset was read: the decoder opens without blocking, then refuses.
    image, pipe = save(tmp_path / "a.png"), fifo(tmp_path / "b.png")

    def waited(signum, frame):
        raise AssertionError("decode_image waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(30)
    try:
        with pytest.raises(OSError, match="is a FIFO, not a regular file"):
            decode_image(pipe, 4)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    cache = load_images([image, pipe], image_size=4, cache_dir=tmp_path / "cache", threads=1)
    assert list(cache.bad) == [1] and "is a FIFO, not a regular file" in cache.bad[1]


# --- the image cache on a full or read-only disk ------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, tmpfs):
    """``small_disk(size) -> Path``: a fresh tmpfs of ``size`` (such as ``200k``) under the test's
    folder (``remount_read_only`` makes it read-only: root ignores file permissions)."""
    made = []

    def mount(size: str) -> Path:
        made.append(tmpfs(tmp_path / f"disk{len(made)}", size))
        return made[-1]

    return mount


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def test_full_disk_while_caching_is_a_clean_error_and_leaves_no_temporary_file(tmp_path, demo_data, write_space,
                                                                                small_disk):
    cache_dir = small_disk("200k") / "cache"  # the demo's 140 images need 420 KiB at 32 px
    space = write_space(study={"data": str(demo_data)})
    result = run_maskopt(*search_args(space, tmp_path, cache_dir))  # it died of SIGBUS ("Bus error")
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert_clean_error(result, "the disk is full", f"(in {cache_dir})", "Free space there", "--cache-dir",
                       "needs 0.4 MiB")
    assert [p.suffix for p in cache_dir.iterdir()] == [".lock"], "no temporary file is left in the cache folder"
    assert not (tmp_path / "x.db").exists()


def test_read_only_cache_folder(tmp_path, demo_data, write_space, small_disk):
    disk = small_disk("2m")
    paths = load_dataset(demo_data).paths
    built = load_images(paths, image_size=32, cache_dir=disk / "cache", threads=1)
    remount_read_only(disk)

    # A cache built before is read without its lock: a read-only, shared cache serves.
    hit = load_images(paths, image_size=32, cache_dir=disk / "cache")
    assert not hit.built and hit.key == built.key
    np.testing.assert_array_equal(hit.images, built.images)

    # A size not cached yet cannot be written there: a clean error, naming the folder.
    space = write_space(study={"data": str(demo_data)}, params={"image_size": 24})
    result = invoke(*search_args(space, tmp_path, disk / "cache"))
    assert_clean_error(result, "the filesystem is read-only", f"(in {disk / 'cache'})", "--cache-dir")
    assert not (tmp_path / "x.db").exists()
    # And where the cache folder would have to be made on the read-only disk:
    assert_clean_error(invoke(*search_args(space, tmp_path, disk / "new")), "the filesystem is read-only",
                       f"(in {disk / 'new'})")


def test_temporary_cache_files_have_unpredictable_names(tmp_path):
    images = [save(tmp_path / f"{i}.png", (i * 40, 0, 0)) for i in range(3)]
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    key = cache_key(images, 4)
    # The old temporary name was predictable: a link planted there made the builder write through it.
    (cache_dir / f"{key}.tmp{os.getpid()}.npy").symlink_to(victim)
    umask = os.umask(0o022)
    try:
        cache = load_images(images, image_size=4, cache_dir=cache_dir, threads=1)
    finally:
        os.umask(umask)
    assert cache.built and victim.read_text() == "keep me"
    assert (cache.images[:, 0] == np.array([0, 40, 80])[:, None, None]).all()
    # Readable by the other users of a shared cache folder, as the umask allows (mkstemp's files are private).
    assert {stat.S_IMODE(os.stat(cache_dir / f"{key}{suffix}").st_mode) for suffix in (".npy", ".json")} == {0o644}


# --- data that was silently misread ---------------------------------------------------------------


def test_a_repeated_person_row_is_counted_once_with_a_note(tmp_path):
    data = train_csv(write_competition(tmp_path / "data", PEOPLE[:2]), ROW["000001"], ROW["000002"], ROW["000001"])
    result = invoke("eda", str(data))
    assert result.exit_code == 0, result.output
    assert "2 persons, 14 images" in result.output
    assert f"{data / 'train' / 'train.csv'} lists 1 person row(s) twice (line 4 repeats line 2): each person " \
           "folder is counted once" in flat(result.output)


def test_two_rows_naming_one_person_folder_differently_are_refused(tmp_path, write_space):
    data = train_csv(write_competition(tmp_path / "data", PEOPLE), ROW["000001"], ROW["000002"], ROW["000003"],
                     "000009,female,Asian,25,000001_male_Asian_25")
    message = "train.csv, lines 2 and 5: both name the folder"
    space = write_space(study={"data": str(data)})
    assert_clean_error(invoke(*search_args(space, tmp_path, tmp_path / "cache")), message, "keep one of the two rows")
    # eda leaves both persons out, and says why.
    result = invoke("eda", str(data))
    assert result.exit_code == 0 and "2 persons, 14 images" in result.output, result.output
    assert "excluded 2 person(s) with problems" in flat(result.output)
    assert flat(result.output).count(message) == 1, "the one clash of two persons is listed once"


def test_one_image_listed_twice_in_a_csv(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save(tmp_path / name)
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("path,label,group\na.png,cat,p1\nb.png,dog,p2\n./a.png,dog,p1\nc.png,dog,p3\n")
    assert_clean_error(invoke("eda", str(csv_path)), "lines 2 and 4: image", "'cat'/'p1' and 'dog'/'p1'",
                       "keep one of the two rows")
    csv_path.write_text("path,label,group\na.png,cat,p1\nb.png,dog,p2\n./a.png,cat,p1\nc.png,dog,p3\n")
    result = invoke("eda", str(csv_path))
    assert result.exit_code == 0 and "3 groups, 3 images" in result.output, result.output
    assert "lists 1 image(s) twice with the same label and group (line 4 repeats line 2): each is used once" \
           in flat(result.output)


def test_one_file_in_two_class_folders_is_refused(tmp_path):
    save(tmp_path / "cats" / "a.png")
    save(tmp_path / "dogs" / "b.png")
    os.link(tmp_path / "cats" / "a.png", tmp_path / "dogs" / "a.png")
    assert_clean_error(invoke("eda", str(tmp_path)), f"{tmp_path / 'dogs' / 'a.png'} is the same file as "
                       f"{tmp_path / 'cats' / 'a.png'}, in class 'dogs' and 'cats'")
    (tmp_path / "dogs" / "a.png").unlink()
    (tmp_path / "cats" / "again.png").symlink_to(tmp_path / "cats" / "a.png")
    result = invoke("eda", str(tmp_path))
    assert result.exit_code == 0 and "2 groups, 2 images" in result.output, result.output
    assert "1 image(s) appear twice in one class under another name" in flat(result.output)


@pytest.mark.parametrize(("age", "shown"),
                         [("1" * 5000, "1" * 77 + "..."), ("151", "151"), ("0" * 5000 + "200", "0" * 77)])
def test_absurd_ages_are_refused_with_the_line(tmp_path, write_space, age, shown):
    data = train_csv(write_competition(tmp_path / "data", PEOPLE), ROW["000001"], ROW["000002"],
                     f"000003,male,Asian,{age},000003_male_Asian_33")
    message = f"train.csv, line 4: age {shown}"
    result = invoke("eda", str(data))  # 5000 digits: int() raised, a traceback
    assert result.exit_code == 0 and message in flat(result.output) and "is outside 0..150 years" in result.output
    assert len(result.output) < 3000
    space = write_space(study={"data": str(data)})
    assert_clean_error(invoke(*search_args(space, tmp_path, tmp_path / "cache")), message)


def test_ages_at_the_edges_are_read(tmp_path):
    data = train_csv(write_competition(tmp_path / "data", PEOPLE), ROW["000001"],
                     "000002,female,Asian,0045,000002_female_Asian_45", "000003,male,Asian,150,000003_male_Asian_33")
    assert sorted(set(load_dataset(data).ages)) == [25, 45, 150]


def test_empty_class_folders_and_unread_columns_get_notes(tmp_path):
    save(tmp_path / "data" / "cats" / "a.png")
    save(tmp_path / "data" / "dogs" / "b.png")
    (tmp_path / "data" / "birds").mkdir()
    (tmp_path / "data" / "fish").mkdir()
    (tmp_path / "data" / "fish" / "readme.txt").write_text("no photos yet")
    result = invoke("eda", str(tmp_path / "data"))
    assert result.exit_code == 0 and "2 groups, 2 images, 2 classes" in result.output, result.output
    for name in ("birds", "fish"):
        assert f"class folder '{name}' holds no image (.bmp, .jpeg, .jpg, .png, .webp): it is left out, as no " \
               "class" in flat(result.output)

    (tmp_path / "data" / "labels.csv").write_text("path,label,source,comment\ncats/a.png,x,web,ok\ndogs/b.png,y,,\n")
    result = invoke("eda", str(tmp_path / "data" / "labels.csv"))
    assert result.exit_code == 0, result.output
    assert "labels.csv has column(s) source, comment that maskopt does not read (it reads path, label, " \
           "group)" in flat(result.output)

    competition = write_competition(tmp_path / "competition", PEOPLE[:2])
    text = (competition / "train" / "train.csv").read_text().replace("\n", ",x\n").replace("path,x", "path,notes")
    (competition / "train" / "train.csv").write_text(text)
    result = invoke("eda", str(competition))
    assert result.exit_code == 0, result.output
    assert "train.csv has column(s) notes that maskopt does not read" in flat(result.output)


def test_a_row_longer_than_the_header_is_refused(tmp_path):
    save(tmp_path / "my,photo.png")
    save(tmp_path / "b.png")
    (tmp_path / "data.csv").write_text("path,label\nmy,photo.png,cat\nb.png,dog,,\n")  # trailing commas: nothing lost
    assert_clean_error(invoke("eda", str(tmp_path / "data.csv")), "data.csv, line 2: 3 field(s), expected 2",
                       "quote a value that holds a comma")
    assert "line 3" not in invoke("eda", str(tmp_path / "data.csv")).output


def _upright_test_photos(root: Path) -> dict[str, Path]:
    """A 16-bit grey PNG, a JPEG stored sideways with an EXIF orientation, a file whose name is not UTF-8."""
    grey16 = root / "a" / "grey16.png"
    grey16.parent.mkdir(parents=True)
    Image.fromarray(np.full((40, 40), 0x8080, dtype=np.uint16)).save(grey16)  # 32896 / 257 = 128
    assert Image.open(grey16).mode.startswith("I")
    # Stored 64 wide x 32 high, left half red and right half blue; orientation 6 turns it 90 degrees
    # clockwise to a 32 x 64 portrait: red on top, blue below.
    sideways = np.zeros((32, 64, 3), dtype=np.uint8)
    sideways[:, :32] = (255, 0, 0)
    sideways[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = root / "a" / "phone.jpg"
    Image.fromarray(sideways).save(rotated, exif=exif, quality=95)
    undecodable = Path(os.fsdecode(os.path.join(os.fsencode(root / "a"), b"caf\xe9.png")))  # Latin-1 bytes
    save(undecodable, (10, 200, 10), (40, 40))
    for i in range(3):
        save(root / "b" / f"{i}.png", (200, 200, 200), (40, 40))
    return {"grey16": grey16, "rotated": rotated, "undecodable": undecodable}


def test_16_bit_exif_rotated_and_non_utf8_named_photos_through_search_and_eda(tmp_path, write_space):
    data = tmp_path / "data"
    photos = _upright_test_photos(data)

    result = invoke("eda", str(data))  # the name that is not UTF-8 crashed nothing here, but see below
    assert result.exit_code == 0, result.output
    assert "32x64 (1)" in result.output, "the phone photo's size as shown upright"

    space = write_space(study={"data": str(data)})
    cache_dir = tmp_path / "cache"
    result = invoke(*search_args(space, tmp_path, cache_dir))  # the cache key raised UnicodeEncodeError
    assert result.exit_code == 0, result.output + repr(result.exception)

    dataset = load_dataset(data)
    cache = load_images(dataset.paths, image_size=32, cache_dir=cache_dir)
    assert not cache.built, "the search cached these"
    row = {name: cache.images[dataset.paths.index(path)].astype(int) for name, path in photos.items()}
    assert (row["grey16"] == 128).all(), "16-bit grey scaled to 8 bits, not clipped to white"
    red, blue = np.array([255, 0, 0])[:, None, None], np.array([0, 0, 255])[:, None, None]
    assert np.abs(row["rotated"][:, 2:14] - red).max() < 40, "top half red: the photo was turned upright"
    assert np.abs(row["rotated"][:, 18:30] - blue).max() < 40
    assert (row["undecodable"][:, 0, 0] == (10, 200, 10)).all()
    np.testing.assert_array_equal(cache.images[dataset.paths.index(photos["rotated"])],
                                  decode_image(photos["rotated"], 32))


def test_a_class_folder_name_that_is_not_utf8_is_refused(tmp_path):
    save(tmp_path / "cats" / "a.png")
    bad = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"chats-\xe9")))
    save(bad / "b.png")
    assert_clean_error(invoke("eda", str(tmp_path)), "its name is not valid UTF-8; rename it", "chats-\\udce9")


# --- names that hold terminal escape sequences ------------------------------------------------------


def test_eda_escapes_control_characters_in_names(tmp_path):
    save(tmp_path / "data" / f"{ESC}[31mred{ESC}[0m" / "a.png")
    save(tmp_path / "data" / "blue\u202eeulb" / "b.png")  # a right-to-left override
    (tmp_path / "data" / f"{ESC}]0;title\a").mkdir()  # an empty class folder, named in a note
    for extra in ([], ["--json"], ["--out", str(tmp_path / "eda")]):
        result = invoke("eda", str(tmp_path / "data"), *extra)
        assert result.exit_code == 0, result.output
        assert ESC not in result.output and "\u202e" not in result.output and "\a" not in result.output
        if not extra:
            assert "\\x1b[31mred\\x1b[0m" in result.output and "blue\\u202eeulb" in result.output
            assert "class folder '\\x1b]0;title\\x07' holds no image" in flat(result.output)
    assert (tmp_path / "eda" / "samples.png").is_file()
