"""gare.io.atomic_write: content kinds, the old file survives every failure, no temporary file is left."""

from __future__ import annotations

import os

import pytest
import torch

from gare.io import atomic_write, temporary_path


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_bytes_text_and_writer_function(tmp_path):
    p = atomic_write(tmp_path / "sub" / "a.bin", b"\x00\x01\x02")
    assert p == tmp_path / "sub" / "a.bin" and p.read_bytes() == b"\x00\x01\x02"
    atomic_write(tmp_path / "b.txt", "h\u00e9llo")
    assert (tmp_path / "b.txt").read_bytes() == "h\u00e9llo".encode()
    x = torch.arange(6.0).reshape(2, 3)
    atomic_write(tmp_path / "c.pt", lambda tmp: torch.save(x, tmp))
    assert torch.equal(torch.load(tmp_path / "c.pt"), x)
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_replaces_an_existing_file_and_keeps_the_umask_permissions(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    atomic_write(p, "new")
    assert p.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_error_in_the_writer_keeps_the_old_file_and_removes_the_temporary(tmp_path, exc):
    p = tmp_path / "keep.txt"
    p.write_text("old content")

    def writer(tmp):
        tmp.write_text("half of the new")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(p, writer)
    assert p.read_text() == "old content"
    assert _leftovers(tmp_path) == []


def test_failed_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "x").write_text("a non-empty folder cannot be replaced by a file")
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert _leftovers(tmp_path) == []
    assert (target / "x").exists()


def test_writer_that_writes_elsewhere_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="did not create the file"):
        atomic_write(tmp_path / "z.bin", lambda tmp: None)
    assert not (tmp_path / "z.bin").exists()


def test_temporary_name_is_hidden_unique_and_keeps_the_extension(tmp_path):
    a, b = temporary_path(tmp_path / "v.mp4"), temporary_path(tmp_path / "v.mp4")
    assert a != b and a.parent == tmp_path
    assert a.name.startswith(".v.mp4.") and a.suffix == ".mp4"
