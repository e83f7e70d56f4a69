"""run.output_dir checks made by the driver before any work (the per-actor probe runs on a real
cluster in tests/test_cluster.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rl_div.cli import main
from rl_div.run.writers import RAY_JOB_ENV, OutputDirError, prepare_output_dir


def test_relative_output_dir_becomes_absolute_under_the_working_directory(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    out = prepare_output_dir("runs/a")
    assert out == tmp_path / "runs" / "a" and out.is_dir()
    assert list(out.iterdir()) == []  # the driver's probe file is gone


def test_relative_output_dir_inside_a_ray_job_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    with pytest.raises(OutputDirError, match="'runs/a' is relative, and this Ray job runs in Ray's temporary copy"):
        prepare_output_dir("runs/a")
    assert not (tmp_path / "runs").exists()
    assert prepare_output_dir(tmp_path / "abs") == tmp_path / "abs"


def test_unwritable_output_dir_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a_file").write_text("x")  # a directory cannot be made below a file, even by root
    assert main(["train", "configs/demo.yaml", f"run.output_dir={tmp_path / 'a_file' / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"rl-div: run.output_dir {tmp_path / 'a_file' / 'run'} is not writable by the driver on "
                   f"{socket.gethostname()}: Not a directory")
