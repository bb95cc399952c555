"""vpr_ros.io.files: an atomic write refuses a target that exists and is not a regular file, before
writing anything and without a stray temporary file; a failing writer keeps the old file; a symbolic
link keeps pointing at the file that gets the new content.

The character-device case uses ``/dev/null`` only to see the refusal: the helper must raise before
it creates anything, and ``/dev/null`` is checked to still be a character device afterwards.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support import assert_intact, leftovers, unwritable_targets

from vpr_ros.errors import InputError
from vpr_ros.io.files import atomic_output, output_path, write_atomic


@pytest.fixture
def targets(tmp_path: Path) -> dict[str, Path]:
    return unwritable_targets(tmp_path)


@pytest.mark.parametrize("kind", ["a FIFO", "a folder"])
def test_write_atomic_refuses_what_is_not_a_regular_file(targets: dict[str, Path], kind: str) -> None:
    with pytest.raises(InputError, match=f"is {kind}, not a regular file"):
        write_atomic(targets[kind], b"data")
    assert_intact(targets)


def test_a_character_device_is_refused_before_anything_is_written() -> None:
    with pytest.raises(InputError, match="is a character device, not a regular file"):
        write_atomic("/dev/null", b"data")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p for p in os.listdir("/dev") if p.startswith(".null.tmp")]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    out.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(out, fail)
    assert out.read_text() == "old" and not leftovers(tmp_path)


def test_a_symbolic_link_keeps_pointing_at_the_file_it_names(tmp_path: Path) -> None:
    real, link = tmp_path / "real.npy", tmp_path / "link.npy"
    real.write_bytes(b"old")
    link.symlink_to(real)
    write_atomic(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_a_parent_that_is_a_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder|cannot write"):
        write_atomic(tmp_path / "file" / "out.png", b"data")
    with pytest.raises(InputError):
        with atomic_output(tmp_path / "file" / "deeper" / "out.png"):
            pass


def test_output_path_changes_nothing(tmp_path: Path) -> None:
    assert output_path(tmp_path / "new" / "x.png") == (tmp_path / "new" / "x.png").resolve()
    assert not (tmp_path / "new").exists()
