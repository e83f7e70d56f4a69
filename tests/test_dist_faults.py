"""A dead learner rank fails the run at once, and --resume continues it.

The fast-fail gather and the group's failure with real Ray actors (one dies while the other blocks:
the error comes while the other is still blocked, naming the rank); then a real 2-learner fsdp2
run (Trainer, rollout, reward and learner actors, the tiny bootstrapped model) whose rank 0 is
SIGKILLed after its first checkpoint: `rl-div train` exits 1 with one line naming the rank and
that checkpoint, and `rl-div train <the run's config.yaml> --resume` finishes every step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from helpers import FSDP2, group_run_config  # the same small runs (2 learners: cluster.num_cpus=4)

from rl_div.cli import main
from rl_div.cluster.actors import init_ray
from rl_div.cluster.faults import LearnerFailed, RankFailed, gather_ranks
from rl_div.cluster.learner_group import LearnerGroup
from rl_div.config import load_config, save_config
from rl_div.run.checkpoint import commit_checkpoint, new_checkpoint_dir, save_trainer_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray4() -> Iterator[None]:
    """Ray with 4 CPUs, as a run with two learners and a rollout actor needs (an earlier module's
    2-CPU Ray cannot hold them)."""
    if ray.is_initialized():
        ray.shutdown()
    init_ray(load_config(None, ["cluster.num_cpus=4"]))
    yield
    ray.shutdown()


def ranks(*fates: str) -> list:
    """Stand-in learner ranks, one Ray actor process each, that block, die or raise in work() as
    their fate says. (Defined here so that Ray ships the class by value: a worker does not import
    this module, and the trainer, to run it.)"""

    class Rank:
        def __init__(self, fate: str) -> None:
            self.fate = fate

        def pid(self) -> int:
            return os.getpid()

        def work(self, seconds: float = 600.0) -> float:
            """Like a rank in a collective whose peer is gone: blocks for `seconds`, unless its
            fate is to die (the process exits) or to raise."""
            if self.fate == "die":
                os._exit(1)
            if self.fate == "raise":
                raise ValueError("a bug on this rank")
            time.sleep(seconds)
            return seconds

    return [ray.remote(Rank).options(num_cpus=0, max_restarts=0).remote(f) for f in fates]


def still_running(ref: object) -> bool:
    return not ray.wait([ref], timeout=0)[0]


def test_gather_returns_values_in_rank_order(ray4: None) -> None:
    actors = ranks("block", "block", "block")
    assert gather_ranks([a.work.remote(s) for a, s in zip(actors, [0.3, 0.2, 0.1], strict=True)]) == [0.3, 0.2, 0.1]


@pytest.mark.parametrize("how", ["os._exit", "SIGKILL"])
def test_gather_fails_as_soon_as_a_rank_dies(ray4: None, how: str) -> None:
    actors = ranks("block", "die" if how == "os._exit" else "block")
    pid = ray.get(actors[1].pid.remote())
    refs = [a.work.remote() for a in actors]
    if how == "SIGKILL":
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(RankFailed) as failed:
        gather_ranks(refs)
    assert failed.value.rank == 1 and isinstance(failed.value.error, ray.exceptions.RayActorError)
    assert still_running(refs[0])  # it did not wait for the blocked rank
    ray.kill(actors[0])


def test_gather_names_a_rank_that_raised(ray4: None) -> None:
    actors = ranks("block", "raise")
    refs = [a.work.remote() for a in actors]
    with pytest.raises(RankFailed, match="a bug on this rank") as failed:
        gather_ranks(refs)
    assert failed.value.rank == 1 and still_running(refs[0])
    ray.kill(actors[0])


def test_group_stops_the_survivors_and_names_the_checkpoint(ray4: None, tmp_path: Path) -> None:
    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    tmp, final = new_checkpoint_dir(tmp_path, 2)
    save_trainer_state(tmp, {"step": 2})
    commit_checkpoint(tmp, final, keep=2)
    actors = ranks("block", "die")
    group = LearnerGroup(cfg, actors, sharded=True)
    with pytest.raises(LearnerFailed) as failed:
        group.on_every_rank("work")
    assert re.fullmatch(rf"learner rank 1 died in work\(\) \(.+\); the other ranks were stopped\. Last checkpoint: "
                        rf"{re.escape(str(final))} \(step 2\); rerun `rl-div train CONFIG --resume` to continue "
                        "from it", str(failed.value))
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actors[0].pid.remote())  # the blocked survivor was killed


def test_a_failed_rank_is_one_line_on_the_console_and_its_error_in_the_run_log(ray4: None, tmp_path: Path) -> None:
    """Issue 29 item 10: the group logged an ERROR record (the line and the rank's whole error) that the
    console showed above the CLI's own copy of the line. The console here is a StreamHandler on the
    rl_div logger, beside the run's train.log FileHandler."""
    import io
    import logging

    console, run_log = io.StringIO(), tmp_path / "train.log"
    handlers = [logging.StreamHandler(console), logging.FileHandler(run_log)]
    logger = logging.getLogger("rl_div")
    for handler in handlers:
        logger.addHandler(handler)
    try:
        group = LearnerGroup(load_config(None, [f"run.output_dir={tmp_path}"]), ranks("block", "raise"), sharded=True)
        with pytest.raises(LearnerFailed):
            group.on_every_rank("work")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
    assert "learner rank 1" not in console.getvalue()
    assert re.search(r"learner rank 1 failed in work\(\) .*; the rank's error: ", run_log.read_text())


def test_every_rank_probes_the_output_dir_as_its_own_writer(ray4: None, tmp_path: Path) -> None:
    """Each rank writes checkpoint shards, so each is a writer of its own: probed through the group,
    both ranks wrote and read back one shared probe file (a race: a rank could read the other's
    truncated write, which failed a test run with OutputDirError), and only rank 0 was reported."""
    from rl_div.run.writers import check_writers

    actors = ranks("block", "block")
    group = LearnerGroup(load_config(None, [f"run.output_dir={tmp_path}"]), actors, sharded=True)
    places = check_writers(tmp_path, group.writers())
    assert sorted(places) == ["learner_rank0", "learner_rank1"]
    assert {p["pid"] for p in places.values()} == set(ray.get([a.pid.remote() for a in actors]))
    assert not list(tmp_path.iterdir())  # the probes are gone
    for actor in actors:
        ray.kill(actor)


# ---- end to end: a 2-learner fsdp2 run loses rank 0 --------------------------------------------
@pytest.fixture(scope="module")
def base_model(ray4: None, bootstrapped_prime_gap: Path) -> str:
    return str(bootstrapped_prime_gap)


def kill_rank0_after_first_checkpoint(out: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL learner rank 0 (its pid is in train.log, from the output-dir probe) once the first
    checkpoint is committed."""
    while not (out / "checkpoints" / "latest").exists():
        if stop.wait(0.05):
            return
    pid = int(re.search(r"learner_rank0: node \S+ on \S+ \(pid (\d+)", (out / "train.log").read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def test_killed_learner_rank_fails_the_run_and_resume_finishes_it(base_model: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI, as a user runs it: exit status 1 and the one line on stderr, no traceback."""
    out, killed, stop = tmp_path / "run", [], threading.Event()
    save_config(group_run_config(out, base_model, "train.steps=3", *FSDP2), tmp_path / "run.yaml")
    killer = threading.Thread(target=kill_rank0_after_first_checkpoint, args=(out, killed, stop), daemon=True)
    killer.start()
    try:
        assert main(["train", str(tmp_path / "run.yaml")]) == 1
    finally:
        stop.set()
        killer.join()
    assert killed
    latest = sorted((out / "checkpoints").glob("step_??????"))[-1]
    step = int(latest.name.removeprefix("step_"))
    assert step < 3
    line = (rf"rl-div: learner rank 0 died in \w+\(\) \(.+\); the other ranks were stopped\. Last checkpoint: "
            rf"{re.escape(str(latest))} \(step {step}\); rerun `rl-div train CONFIG --resume` to continue from it")
    stderr = capsys.readouterr().err.splitlines()
    assert any(re.fullmatch(line, s) for s in stderr), stderr[-5:]
    assert not any(s.startswith("Traceback") for s in stderr)
    # printed once: no ERROR block repeating it (issue 29 item 10); the rank's error is in train.log
    assert len([s for s in stderr if "learner rank 0 died" in s]) == 1, stderr[-8:]
    assert "the rank's error:" in (out / "train.log").read_text()
    assert main(["train", str(out / "config.yaml"), "--resume"]) == 0  # as the line says (the run's config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert (out / "checkpoints" / "step_000003" / "dcp").is_dir()
