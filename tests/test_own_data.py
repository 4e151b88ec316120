"""Tuning on your own images: image folders, CSV files and in-memory data, their splits and errors."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpzo.client.cli import build_parser
from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.image_sets import shrink
from sharpzo.client.tasks import resolve_task
from sharpzo.data.base import FewShotTask
from sharpzo.data.image_io import decode_rgb
from sharpzo.data.user_data import InMemoryData

from .conftest import encoded_image

SHARPZO = str(Path(sys.executable).parent / "sharpzo")
BUDGET = 60


def rotated_jpeg(seed: int, size: tuple[int, int] = (20, 12)) -> bytes:
    """A JPEG (20x12 by default) whose EXIF orientation (6) says: rotate 90 degrees to show it upright (12x20)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", exif=exif)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three classes in mixed formats: 6, 3 (too few for 4 shots) and 6 usable images."""
    root = tmp_path / "photos"
    apple = root / "granny_smith-apple"
    write(apple / "a.jpg", encoded_image(1, fmt="JPEG"))
    write(apple / "b.png", encoded_image(2))
    write(apple / "c.webp", encoded_image(3, fmt="WEBP"))
    write(apple / "d.bmp", encoded_image(4, fmt="BMP"))
    write(apple / "e.png", encoded_image(5, mode="L"))
    write(apple / "rotated.jpg", rotated_jpeg(6))
    for i in range(3):
        write(root / "kiwi" / f"{i}.png", encoded_image(10 + i, size=(16, 16)))
    pear = root / "red-pear"
    for i in range(5):
        write(pear / f"{i}.png", encoded_image(20 + i, fmt="PNG"))
    write(pear / "nested" / "deeper.jpeg", encoded_image(25, fmt="JPEG"))
    write(pear / "copy.png", (pear / "0.png").read_bytes())
    write(pear / "corrupt.jpg", encoded_image(26, fmt="JPEG")[:200])
    write(pear / "notes.txt", b"not an image")
    write(pear / ".DS_Store", b"\x00\x01")
    return root


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_mode}|{stat.st_mtime_ns}".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def counts(task: FewShotTask, split: str) -> list[int]:
    return np.bincount(getattr(task, split).labels, minlength=len(task.class_names)).tolist()


def test_folder_formats_names_and_report(photos: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    task = resolve_task(photos, shots=2, seed=0)
    assert task.class_names == ["granny smith apple", "kiwi", "red pear"]
    assert [a + b + c for a, b, c in zip(counts(task, "train"), counts(task, "val"), counts(task, "test"))] == [6, 3, 6]
    warnings = caplog.text
    assert f"{photos / 'red-pear' / 'corrupt.jpg'}" in warnings and "skipped 1 unreadable file(s) of 17" in warnings
    assert f"{photos / 'red-pear' / 'copy.png'} has the same content as {photos / 'red-pear' / '0.png'}" in warnings
    assert "notes.txt" not in warnings and "DS_Store" not in warnings
    notes = "\n".join(task.notes)
    assert str(photos) in notes and "corrupt.jpg" in notes and "copy.png (same content as" in notes

    splits = (task.train, task.val, task.test)
    everything = {digest: image for split in splits for digest, image in zip(split.hashes(), split.images)}
    upright = [image for image in map(Image.open, map(io.BytesIO, everything.values())) if image.size == (12, 20)]
    assert len(upright) == 1 and upright[0].getexif().get(0x0112) is None
    altered_or_left_out = ("rotated.jpg", "corrupt.jpg", "copy.png", ".DS_Store", "notes.txt")
    unchanged = [p for p in photos.rglob("*.*") if p.name not in altered_or_left_out]
    assert len(unchanged) == 14 and all(hashlib.sha256(p.read_bytes()).hexdigest() in everything for p in unchanged)


def test_exif_orientation_is_applied_by_the_one_decoder_on_both_sides() -> None:
    assert decode_rgb(rotated_jpeg(0)).size == (12, 20)  # how the server decodes an upload
    with Image.open(io.BytesIO(shrink(rotated_jpeg(1, size=(1024, 600))))) as shrunk:  # the client, before upload
        assert shrunk.size == (300, 512)


def test_splits_are_disjoint_seeded_and_k_per_class(photos: Path) -> None:
    task = resolve_task(photos, shots=2, seed=0)
    assert counts(task, "train") == [2, 2, 2]
    assert counts(task, "val") == [1, 0, 1]  # a quarter of what is left, at least one where two or more are left
    splits = [set(s.hashes()) for s in (task.train, task.val, task.test)]
    assert sum(map(len, splits)) == len(set.union(*splits)) == 15
    assert task.seed == 0 and task.shots == 2

    again = resolve_task(photos, shots=2, seed=0)
    hashes = [s.hashes() for s in (task.train, task.val, task.test)]
    assert [s.hashes() for s in (again.train, again.val, again.test)] == hashes
    others = [set(resolve_task(photos, shots=2, seed=s).train.hashes()) for s in (1, 2, 3)]
    assert any(other != splits[0] for other in others)
    assert splits[0] <= set(resolve_task(photos, shots=3, seed=0).train.hashes())  # smaller k lies inside larger k


def test_class_too_small_and_allow_fewer(photos: Path) -> None:
    with pytest.raises(ValueError, match=r"too few images for 4 shots: 'kiwi' has 3;.*--allow-fewer"):
        resolve_task(photos, shots=4, seed=0)
    task = resolve_task(photos, shots=4, seed=0, allow_fewer=True)
    assert counts(task, "train") == [4, 3, 4]
    assert counts(task, "test")[1] == 0
    assert any("'kiwi' has 3" in note for note in task.notes)


def test_display_names_from_classes_files(photos: Path) -> None:
    (photos / "classes.txt").write_text("# folder, display name\nkiwi\tKiwi fruit\nred-pear,Red pear, ripe\n")
    assert resolve_task(photos, 2, 0).class_names == ["granny smith apple", "Kiwi fruit", "Red pear, ripe"]
    (photos / "classes.txt").unlink()
    (photos / "classes.json").write_text(json.dumps({"granny_smith-apple": "Granny Smith apple"}))
    assert resolve_task(photos, 2, 0).class_names == ["Granny Smith apple", "kiwi", "red pear"]
    (photos / "classes.json").write_text(json.dumps({"lemon": "lemon"}))
    with pytest.raises(ValueError, match="names folders that .* does not have: lemon"):
        resolve_task(photos, 2, 0)


def test_single_class_and_empty_class_folder(tmp_path: Path) -> None:
    for i in range(4):
        write(tmp_path / "one" / "cat" / f"{i}.png", encoded_image(i))
    with pytest.raises(ValueError, match=r"has 1 class\(es\) \('cat'\).*at least 2 classes"):
        resolve_task(tmp_path / "one", 2, 0)
    (tmp_path / "one" / "dog").mkdir()
    write(tmp_path / "one" / "dog" / "readme.txt", b"to do")
    with pytest.raises(ValueError, match=r"class folder .*dog \(class 'dog'\) holds no images"):
        resolve_task(tmp_path / "one", 2, 0)


def test_csv_source_and_its_errors(photos: Path, tmp_path: Path) -> None:
    rows = [f"../photos/{p.relative_to(photos).as_posix()},{p.parent.name}" for p in sorted(photos.glob("*/*.png"))]
    csv = write(tmp_path / "lists" / "train.csv", ("path,label\n" + "\n".join(rows) + "\n").encode())
    task = resolve_task(str(csv), 2, 0)
    assert task.name == "train" and task.class_names == ["granny_smith-apple", "kiwi", "red-pear"]
    assert [a + b + c for a, b, c in zip(counts(task, "train"), counts(task, "val"), counts(task, "test"))] == [2, 3, 5]
    assert any(str(csv) in note for note in task.notes)

    write(csv, b"file,class\na.png,x\n")
    with pytest.raises(ValueError, match="header 'path,label', got 'file,class'"):
        resolve_task(csv, 2, 0)
    write(csv, ("path,label\n" + rows[0] + "\nmissing.png,kiwi\n").encode())
    with pytest.raises(ValueError, match=r"1 listed file\(s\) do not exist: missing.png \(line 3\)"):
        resolve_task(csv, 2, 0)


def test_separate_test_data(photos: Path, tmp_path: Path) -> None:
    test_root = tmp_path / "held"
    for name, seed in (("kiwi", 40), ("red-pear", 41), ("granny_smith-apple", 42)):
        write(test_root / name / "t.png", encoded_image(seed))
    write(test_root / "kiwi" / "shared.png", (photos / "kiwi" / "0.png").read_bytes())
    task = resolve_task(photos, shots=2, seed=0, test_data=test_root)
    assert counts(task, "test") == [1, 2, 1] and counts(task, "train") == [2, 2, 2]
    assert counts(task, "val") == [4, 0, 4]  # what the draw left, less kiwi/0.png, which the test data also holds
    assert set(task.test.hashes()).isdisjoint(task.train.hashes() + task.val.hashes())
    assert any(str(test_root) in note for note in task.notes)
    assert any("also in the test data" in note and "0.png" in note for note in task.notes)

    write(tmp_path / "other" / "plum" / "p.png", encoded_image(50))
    with pytest.raises(ValueError, match="has classes that .* lacks: 'plum'"):
        resolve_task(photos, 2, 0, test_data=tmp_path / "other")


def test_in_memory_data_and_what_a_str_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    images += [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    images.append(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    labels = [0, 0, 0, 1, 1, 1]
    task = resolve_task((images, labels, ["cat", "dog"]), shots=1, seed=0)
    assert task.class_names == ["cat", "dog"] and counts(task, "train") == [1, 1]
    assert all(b.startswith(b"\x89PNG") for b in task.train.images + task.test.images)
    same = resolve_task(InMemoryData(images, np.array(labels), ["cat", "dog"]), shots=1, seed=0)
    assert same.train.hashes() == task.train.hashes()
    with pytest.raises(ValueError, match="HxW or HxWx3 uint8"):
        resolve_task(([np.zeros((4, 4), np.float32)] * 2, [0, 1], ["a", "b"]), 1, 0)

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "animals" / "x" / "0.png", encoded_image(0))
    with pytest.raises(ValueError, match="not to a built-in dataset"):  # the str means the dataset, not ./animals
        resolve_task("animals", 1, 0, allow_fewer=True)
    with pytest.raises(ValueError, match="has 1 class"):  # a Path means the folder
        resolve_task(Path("animals"), 1, 0)
    with pytest.raises(ValueError, match="'nowhere' is not a built-in dataset .* no such folder or CSV file"):
        resolve_task("nowhere", 1, 0)


def test_cli_data_and_dataset_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["tune", "--data", "groceries", "--test-data", "t.csv", "--allow-fewer"])
    assert args.data == Path("groceries") and args.dataset is None and args.allow_fewer
    for argv in (["tune", "--data", "x", "--dataset", "animals"], ["tune"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert "--dataset" in capsys.readouterr().err


def test_sharpzo_tune_on_a_folder(photos: Path, tiny_server: EmbeddedServer, tmp_path: Path) -> None:
    before = tree_digest(photos)
    run = tmp_path / "run"
    command = [SHARPZO, "tune", "--server", tiny_server.url, "--data", str(photos), "--shots", "2", "--seed", "1",
               "--budget", str(BUDGET), "--dim", "8", "--opt", "popsize=6", "--eval-every", "1000",
               "--out", str(run), "--no-progress"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "corrupt.jpg" in done.stderr and "copy.png" in done.stderr
    assert tree_digest(photos) == before, "the user's folder changed"

    result = json.loads((run / "result.json").read_text())
    assert 0 < result["queries"] <= BUDGET and result["budget"]["max_queries"] == BUDGET
    task = json.loads((run / "config.json").read_text())["task"]
    expected = resolve_task(photos, shots=2, seed=1)
    assert task["class_names"] == expected.class_names and task["seed"] == 1 and task["shots"] == 2
    assert task["image_sha256"] == {s: getattr(expected, s).hashes() for s in ("train", "val", "test")}
    assert task["notes"] == expected.notes
