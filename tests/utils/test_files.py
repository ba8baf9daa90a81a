"""Atomic writes: the old file or the new one, never half of one, and no temp files left."""

from __future__ import annotations

import pytest

from encoderkit.utils.files import atomic_write, atomic_write_text


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "config.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path, error):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"ne")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_files_get_the_usual_permissions(tmp_path):
    import os

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert os.access(target, os.R_OK)


def test_describe_os_error_gives_the_reason_in_words():
    import errno

    from encoderkit.utils.files import describe_os_error

    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == (
        "no space left on device"
    )
    assert describe_os_error(PermissionError(errno.EACCES, "x", "/a")) == "permission denied"
    assert describe_os_error(OSError("no errno")) == "no errno"
