"""One run per output folder (issue 29 item 9): two runs started into one folder wrote every metric
row twice, interleaved. The holder here is a real second process that took the lock; the refusal
comes from the CLI before Ray starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rl_div.cli import main
from rl_div.run import lock
from rl_div.run.checkpoint import claim_output_dir

REPO = Path(__file__).resolve().parent.parent
HOLD = "import sys; from rl_div.run.lock import acquire; acquire(sys.argv[1]); print('held', flush=True); " \
       "sys.stdin.readline()"


def test_a_second_run_into_a_held_folder_is_refused_in_one_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        held = json.loads((out / ".rl_div.lock").read_text())
        assert (held["host"], held["pid"]) == (socket.gethostname(), holder.pid)
        assert main(["train", str(REPO / "configs/demo.yaml"), f"run.output_dir={out}", "--overwrite"]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"rl-div: run.output_dir {out} is in use by another run (pid {holder.pid} on "
                               f"{socket.gethostname()}, started ")
        assert line.endswith(f"if that run is gone, delete {out / '.rl_div.lock'}")
        with pytest.raises(lock.OutputDirLocked):
            lock.acquire(out)
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    # the holder ended without releasing (as a killed run does): its lock is stale and taken over
    assert (out / ".rl_div.lock").exists()
    claim_output_dir(out, resume=False, overwrite=False)
    lock.acquire(out)
    assert json.loads((out / ".rl_div.lock").read_text())["pid"] == os.getpid()
    lock.release(out)
    assert not (out / ".rl_div.lock").exists()


def test_a_lock_from_another_host_is_honoured(tmp_path: Path) -> None:
    (tmp_path / ".rl_div.lock").write_text(json.dumps({"host": "elsewhere-" + socket.gethostname(), "pid": 1,
                                                       "started": 0}))
    with pytest.raises(lock.OutputDirLocked, match="pid 1 on elsewhere-"):
        claim_output_dir(tmp_path, resume=True, overwrite=False)
