"""fsutil.out_of_space_names: the one wrapper that turns a full disk under any stage into one line."""
import errno
import os

import pytest

from edgekit.fsutil import OutOfSpaceError, out_of_space_names


def _full(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _message(stage, out, path, **kwargs) -> str:
    with pytest.raises(OutOfSpaceError) as caught:
        with out_of_space_names(stage, out, **kwargs):
            raise _full(path)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    return str(caught.value)


def test_a_file_in_the_staged_sibling_is_not_named_only_out(tmp_path):
    out = tmp_path / "calib"
    staged = tmp_path / f".calib.partial-{os.getpid()}" / "unet" / "shard-0.npz"
    line = _message("calibrate", out, staged)
    assert line.startswith(f"calibrate: no space left on device writing {out}, ")
    assert "partial" not in line and "MiB free there" in line
    assert line.endswith("; nothing was written to it, free some space and rerun")
    assert "(at" not in _message("calibrate", out, out)


@pytest.mark.parametrize("where", ["elsewhere", "inside"])
def test_a_file_elsewhere_or_inside_out_is_named_as_well(tmp_path, where):
    out = tmp_path / "pkg"
    path = tmp_path / "tmpdir" / "x.onnx" if where == "elsewhere" else out / "report.md"
    line = _message("report", out, path, then="free some space and rerun to resume")
    assert line.startswith(f"report: no space left on device writing {out} (at {path}), ")
    assert line.endswith("; free some space and rerun to resume")
    # another output's staged sibling in the same folder is not this output's: named
    other = tmp_path / f".other.partial-{os.getpid()}" / "f"
    assert f"(at {other})" in _message("report", out, other)


def test_other_errors_pass_through_unchanged(tmp_path):
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "x"))
    with pytest.raises(OSError) as caught:
        with out_of_space_names("quantize", tmp_path / "q"):
            raise denied
    assert caught.value is denied
    with out_of_space_names("quantize", tmp_path / "q"):
        pass  # nothing raised, nothing changed
