"""Reading HDF5 files in a child process: the same record, the same errors, and a reader that
hangs or dies becomes a ReadError instead of hanging the caller."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_genreg.io import ReadError, is_hdf5_path, read, read_isolated
from napari_genreg.io import isolated as isolated_module


def test_the_record_is_the_one_read_in_process(tmp_path: Path, mri: SimpleNamespace) -> None:
    path = tmp_path / "scan.h5"
    mri.fastmri(path, mask=np.arange(mri.encoded[1]) % 2 == 0)
    here = read(path, noise_sigma=0.0, seed=3)
    there = read_isolated(path, noise_sigma=0.0, seed=3)
    np.testing.assert_array_equal(there.kspace, here.kspace)
    np.testing.assert_array_equal(there.mask, here.mask)
    np.testing.assert_array_equal(there.reference, here.reference)
    assert there.meta == here.meta


def test_the_childs_read_error_is_raised_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "noise.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ReadError) as here:
        read(path)
    with pytest.raises(ReadError) as there:
        read_isolated(path)
    assert str(there.value) == str(here.value)
    assert there.value.path == os.fspath(path)


def _hanging_file(tmp_path: Path) -> Path:
    """A FIFO named ``.h5`` with no writer: opening it blocks for ever, as HDF5 does on some
    corrupt files."""
    path = tmp_path / "hangs.h5"
    os.mkfifo(path)
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_reader_that_hangs_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    path = _hanging_file(tmp_path)
    start = time.monotonic()
    with pytest.raises(ReadError, match=r"did not finish within 2 s and was stopped"):
        read_isolated(path, timeout=2)
    assert time.monotonic() - start < 30
    assert not _readers(psutil)  # the child was killed


def _readers(psutil) -> list:
    """This process's children that run the isolated reader."""
    found = []
    for child in psutil.Process().children():
        try:
            if isolated_module.CHILD in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone meanwhile
            pass
    return found


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_reader_that_dies_is_reported(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    path = _hanging_file(tmp_path)
    outcome: list[BaseException] = []

    def read_in_thread() -> None:
        try:
            read_isolated(path, timeout=120)
        except ReadError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read_in_thread)
    thread.start()
    deadline = time.monotonic() + 30
    while not _readers(psutil) and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = _readers(psutil)
    child.kill()  # as a crash of the HDF5 library would end it
    thread.join(30)
    assert not thread.is_alive()
    (error,) = outcome
    assert "the process reading it died (exit code -9): the file is probably corrupt" in str(error)


def test_a_child_that_cannot_read_says_why(tmp_path: Path, monkeypatch) -> None:
    """A child that fails before reading (here its package is shadowed by a broken one) is
    reported with its last words, not blamed on the file."""
    broken = tmp_path / "shadow" / "napari_genreg"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('a broken install')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    path = tmp_path / "scan.h5"
    path.write_bytes(b"not read")
    with pytest.raises(ReadError) as info:
        read_isolated(path, timeout=60)
    message = str(info.value)
    assert "the process reading it failed (exit code 1): RuntimeError: a broken install" in message
    assert "corrupt" not in message


def test_a_damaged_global_heap_is_a_read_error(tmp_path: Path, mri: SimpleNamespace) -> None:
    """The case that was found by flipping bytes: an ISMRMRD file whose last global heap
    collection claims 199 bytes more than it has. HDF5 2.0.0 spins on it for minutes (read in
    process, this test would not end); a later HDF5 may report it instead."""
    kspace, _ = mri.multicoil()
    path = tmp_path / "scan.h5"
    mri.mrd(path, kspace, recon=mri.recon)
    data = bytearray(path.read_bytes())
    at = data.rindex(b"GCOL") + 8  # signature, version, 3 reserved bytes, then the size
    size = int.from_bytes(data[at : at + 8], "little")
    data[at : at + 8] = (size + 199).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ReadError, match=f"^{re.escape(str(path))}: "):
        read_isolated(path, timeout=3)


def test_a_file_that_crashes_hdf5_is_a_read_error(tmp_path: Path) -> None:
    """Found by tools/fuzz_readers.py: one byte changed in the message of our own writer's
    ``settings`` attribute (0x01 -> 0x14, 17 bytes after the name) made h5py 3.16 / HDF5
    2.0.0 crash (segmentation fault) reading the attribute; read in process, it would take
    napari down. Here the child dies and the caller gets a ReadError (with another HDF5 the
    file may read, or be refused, instead)."""
    from napari_genreg.io import KSpaceData, write

    path = tmp_path / "recon.h5"
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    write(path, image, settings={"method": "tv"})
    data = bytearray(path.read_bytes())
    at = data.index(b"settings\x00") + 17
    data[at] = 0x14
    path.write_bytes(bytes(data))
    try:
        outcome = read_isolated(path, timeout=60)
    except ReadError as exc:
        assert str(exc).startswith(f"{path}: ")
    else:
        assert isinstance(outcome, KSpaceData)


def test_bad_arguments_are_refused_before_a_child_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        read_isolated(tmp_path / "x.h5", timeout=0)
    with pytest.raises(ValueError, match="noise_sigma"):
        read_isolated(tmp_path / "x.h5", noise_sigma=-1.0)


def test_the_time_limit_grows_with_the_file(tmp_path: Path) -> None:
    small, big = tmp_path / "small.h5", tmp_path / "big.h5"
    small.write_bytes(b"x")
    with open(big, "wb") as f:  # a sparse file of 2 GiB
        f.truncate(2**31)
    base, per_gib = isolated_module.BASE_SECONDS, isolated_module.SECONDS_PER_GIB
    assert isolated_module.time_limit(small) == pytest.approx(base, abs=1e-3)
    assert isolated_module.time_limit(big) == pytest.approx(base + 2 * per_gib)
    assert isolated_module.time_limit(tmp_path / "missing.h5") == base


@pytest.mark.parametrize(
    ("name", "hdf5"),
    [("a.h5", True), ("a.HDF5", True), ("b.mrd", True), ("c.npy", False), ("d.nii.gz", False)],
)
def test_which_files_are_hdf5(name: str, hdf5: bool) -> None:
    assert is_hdf5_path(name) is hdf5


def test_what_the_child_prints_before_its_answer_is_skipped(tmp_path: Path, monkeypatch) -> None:
    """Output on stdout before the answer (here a ``sitecustomize`` that prints) does not
    spoil it; the answer is the last thing the child writes."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('hello from sitecustomize' * 100)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    path = tmp_path / "scan.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    with pytest.raises(ReadError, match="not a readable"):
        read_isolated(path, timeout=60)


def test_the_child_does_not_outlive_an_interrupted_caller(tmp_path: Path) -> None:
    """Ctrl-C while waiting (here in a separate Python, interrupted by SIGINT) kills the
    child too."""
    psutil = pytest.importorskip("psutil")
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs")
    path = _hanging_file(tmp_path)
    caller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from napari_genreg.io import read_isolated; "
            f"read_isolated({str(path)!r}, timeout=300)",
        ],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    children: list = []
    while not children and time.monotonic() < deadline:
        time.sleep(0.1)
        children = psutil.Process(caller.pid).children()
    assert children, "the caller started no child"
    caller.send_signal(2)  # SIGINT
    _, err = caller.communicate(timeout=60)
    assert b"KeyboardInterrupt" in err
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_the_answer_comes_back_whole_and_writeable(tmp_path: Path) -> None:
    """The child's answer file round trip: arrays (contiguous or not, of every dtype a record
    holds) come back equal and writeable, the rest of the record as it was."""
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((2, 3, 8, 6)) + 1j).astype(np.complex64)
    result = (
        "ok",
        {
            "kspace": kspace,
            "strided": kspace[:, :, ::2].real,  # not contiguous: pickled in band
            "fortran": np.asfortranarray(rng.random((5, 4), np.float32)),
            "mask": rng.random(6) > 0.5,
            "text": "fastMRI",
        },
    )
    path = tmp_path / "answer"
    isolated_module._save_answer(result, str(path))
    status, back = isolated_module._load_answer(path)
    assert status == "ok" and back["text"] == "fastMRI"
    for key in ("kspace", "strided", "fortran", "mask"):
        np.testing.assert_array_equal(back[key], result[1][key])
        assert back[key].dtype == result[1][key].dtype
        assert back[key].flags.writeable
    # no copy in the caller: the contiguous arrays are views of the buffers read from the file
    for key in ("kspace", "fortran", "mask"):
        assert isinstance(_owner(back[key]), bytearray)
    assert not np.shares_memory(back["kspace"], back["mask"])


def _owner(array: np.ndarray) -> object:
    """What finally holds ``array``'s memory."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_an_answer_cut_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "answer"
    isolated_module._save_answer(("ok", np.arange(1000.0)), str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(EOFError, match="ends early"):
        isolated_module._load_answer(path)


def test_a_child_that_exits_without_an_answer_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(isolated_module, "CHILD", "pass")
    path = tmp_path / "scan.h5"
    path.write_bytes(b"not read")
    with pytest.raises(ReadError, match="the process reading it gave no readable answer"):
        read_isolated(path, timeout=60)


def test_no_room_to_hand_the_record_back_is_said(tmp_path: Path, monkeypatch) -> None:
    """The child cannot write its answer (here the answer's name is the folder itself, as a
    full temporary folder would refuse it): the error says so and what to do."""
    monkeypatch.setattr(isolated_module, "ANSWER", ".")
    path = tmp_path / "noise.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ReadError, match=r"could not be handed back through .*point TMPDIR"):
        read_isolated(path, timeout=60)
