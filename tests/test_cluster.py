"""Launching on real Ray clusters started on this machine: `ray job submit` through
launch/ray_job_submit.sh, and a two-node cluster (custom resources node_a / node_b) on which the
learner runs on the worker node, the worker node's raylet is killed mid-run, and --resume continues.

Every node is a `ray start --block` process group with its own ports and temp dir (tests/ray_nodes.py),
stopped by its own process ids: other Ray instances on the machine are never touched.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_nodes import REPO, RayNode, node_env, wait_for_nodes

from rl_div.run.tracking import read_metrics

pytestmark = pytest.mark.slow


def small_run(out: Path, cache: Path, *extra: str) -> list[str]:
    """Overrides that shrink configs/demo.yaml to a run of seconds (the base model bootstraps in 2 steps)."""
    return [f"run.output_dir={out}", f"bootstrap.cache_dir={cache}", "bootstrap.steps=2", "train.steps=2",
            "rollout.prompts_per_step=4", "rollout.group_size=4", "eval.at_start=false", "eval.every=0", "eval.n=4",
            "data.num_eval_prompts=4", "eval.embedding_metrics=false", "checkpoint.every=0",
            "tracking.progress=false", "tracking.tensorboard=false", *extra]


def output_tail(done: subprocess.CompletedProcess) -> str:
    return f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


# ---- 1. ray job submit -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def job_head() -> Iterator[RayNode]:
    """A head node with the job server (the dashboard: `ray job submit` talks to it over HTTP); no
    PYTHONPATH, so a job imports rl_div and the plugins from the working_dir it uploads."""
    head = RayNode(num_cpus=2, dashboard=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no job server:\n{head.log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield head
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def submit(head: RayNode, *args: str) -> subprocess.CompletedProcess:
    env = {**node_env(None), "RAY_ADDRESS": head.dashboard_url}
    return subprocess.run(["bash", "launch/ray_job_submit.sh", "configs/demo.yaml", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ray_job_submit_trains_the_demo_with_plugins_from_the_working_dir(job_head: RayNode, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = submit(job_head, *small_run(out, tmp_path / "bootstrap"), "run.plugins=[tests.plugins.my_rewards]",
                  "reward.rewards=[{name: task_verifier}, {name: test_length, weight: 0.0}]")
    assert done.returncode == 0, output_tail(done)
    rows = read_metrics(out / "metrics.jsonl", kind="train")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["faults/reward_errors"] == 0 and row["reward/nan_frac"] == 0
        # the plugin reward ran (in the reward actor's worker process): completions of 1..4 characters
        assert 1 <= row["reward/test_length"] <= 4
    ckpt = out / "checkpoints" / "step_000002"
    assert (ckpt / "policy" / "model.safetensors").stat().st_size > 0 and (ckpt / "learner_state.pt").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert json.loads((out / "eval" / "step_000002.json").read_text())["metrics"]["n"] == 4
    # the driver and the learner imported rl_div from the uploaded working_dir, not an installed copy
    log = (out / "train.log").read_text()
    uploaded = f"{job_head.temp_dir}/session_latest/runtime_resources/working_dir_files/"
    code_dirs = [line.rsplit(" from ", 1)[1] for line in log.splitlines() if "rl_div from " in line]
    assert len(code_dirs) == 2, log
    for code_dir in code_dirs:
        assert Path(code_dir).resolve().is_relative_to(Path(uploaded).resolve()), code_dir


def test_ray_job_with_a_relative_output_dir_fails_fast(job_head: RayNode, tmp_path: Path) -> None:
    # configs/demo.yaml's run.output_dir is runs/demo: inside a job that is Ray's temporary copy
    done = submit(job_head, f"bootstrap.cache_dir={tmp_path}", "bootstrap.steps=2")
    assert done.returncode != 0
    assert "run.output_dir 'runs/demo' is relative" in done.stdout + done.stderr, output_tail(done)


# ---- 2. two nodes: placement by custom resources, a lost node, resume -----------------------------
def private_mount_wrapper(private: Path) -> list[str] | None:
    """A command prefix that runs a node in its own mount namespace with a private tmpfs over
    ``private``: that node's view of the directory differs from the driver's, as a node-local disk
    does on a real cluster. None where mount namespaces are not allowed (not root)."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs rd_probe {private}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs rd_private {private} && exec "$@"', "sh"]


class TwoNodes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.private = Path(tempfile.mkdtemp(prefix="rdpriv"))
        self.wrapper = private_mount_wrapper(self.private)
        code = [str(REPO), str(REPO / "tests")]  # installed on every node (here: the checkout)
        self.head = RayNode(num_cpus=2, resources={"node_a": 1}, pythonpath=code, dashboard=True)  # state API
        self.nodes = [self.head]
        self.worker = self.add_worker()
        wait_for_nodes(self.head, 2)

    def add_worker(self) -> RayNode:
        worker = RayNode(self.head, num_cpus=1, resources={"node_b": 1}, pythonpath=[str(REPO), str(REPO / "tests")],
                         wrapper=self.wrapper)
        self.nodes.append(worker)
        return worker

    def train_cmd(self, out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "rl_div.cli", "train", "configs/demo.yaml",
                *small_run(out, self.root / "bootstrap", "cluster.learner_resources={node_b: 1}",
                           "cluster.rollout_resources={node_a: 1}", *extra), "--address", self.head.address]

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.head.temp_dir, ignore_errors=True)
        shutil.rmtree(self.private, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    cluster = TwoNodes(tmp_path_factory.mktemp("two_nodes"))
    try:
        yield cluster
    finally:
        cluster.close()


def actor_nodes(head: RayNode) -> dict[str, list[str]]:
    """Alive actor class -> the custom resources (node_a / node_b) of the nodes they run on."""
    from ray.util.state import list_actors, list_nodes

    kinds = {n.node_id: [r for r in n.resources_total if r.startswith("node_")]
             for n in list_nodes(address=head.dashboard_url)}
    placed: dict[str, list[str]] = {}
    for actor in list_actors(address=head.dashboard_url, filters=[("state", "=", "ALIVE")]):
        placed.setdefault(actor.class_name, []).extend(kinds[actor.node_id])
    return placed


def run_cli(cmd: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=node_env([str(REPO), str(REPO / "tests")]), capture_output=True,
                          text=True, timeout=timeout_s)


def test_output_dir_the_learner_node_does_not_share_fails_at_start(two_nodes: TwoNodes) -> None:
    if two_nodes.wrapper is None:
        pytest.skip("mount namespaces (unshare -m) not allowed here: cannot give a node its own disk")
    start = time.monotonic()
    done = run_cli(two_nodes.train_cmd(two_nodes.private / "run"))
    assert done.returncode == 2, output_tail(done)
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"rl-div: run.output_dir {two_nodes.private / 'run'} is not shared storage: "
                              "the learner actor"), output_tail(done)
    assert not (two_nodes.private / "run" / "checkpoints").exists()
    print(f"not-shared output_dir failed after {time.monotonic() - start:.1f} s")


def test_losing_the_learner_node_fails_the_run_and_resume_continues(two_nodes: TwoNodes) -> None:
    out = two_nodes.root / "run"
    # 4 steps, a checkpoint after each; a 0.2 s/sample reward makes each step last >3 s so the kill
    # lands mid-run
    cmd = two_nodes.train_cmd(out, "train.steps=4", "checkpoint.every=1", "run.plugins=[plugins.my_rewards]",
                              "reward.rewards=[{name: task_verifier}, {name: test_sleep, weight: 0.0, "
                              "params: {seconds: 0.2}}]")
    env = node_env([str(REPO), str(REPO / "tests")])
    with open(out.parent / "run_a.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not (out / "checkpoints" / "latest").exists():
                assert proc.poll() is None, (out.parent / "run_a.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                time.sleep(0.2)
            placement = actor_nodes(two_nodes.head)
            two_nodes.worker.kill_raylet()
            killed = time.monotonic()
            two_nodes.worker = two_nodes.add_worker()  # a replacement node_b joins while the run notices
            rc = proc.wait(timeout=120)  # fails loudly, does not hang
            failed_after = time.monotonic() - killed
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (out.parent / "run_a.log").read_text()
    assert rc == 1, text[-4000:]
    # the learner's calls fail (unreachable, or dead once Ray's health check declares its node dead)
    assert re.search(r"ray\.exceptions\.Actor(Died|Unavailable)Error", text), text[-4000:]
    # the actors ran where the config put them (Ray's state API: each actor's node, and its resources)
    assert placement["Learner"] == ["node_b"] and placement["RolloutHost"] == ["node_a"], placement
    latest = (out / "checkpoints" / "latest").read_text().strip()
    crashed_at = int(latest.removeprefix("step_"))
    assert 1 <= crashed_at < 4, "the kill must land mid-run"

    wait_for_nodes(two_nodes.head, 2)  # the head and the replacement
    start = time.monotonic()
    done = run_cli([*cmd, "--resume"])
    resumed_s = time.monotonic() - start
    assert done.returncode == 0, output_tail(done)
    assert f"resumed from {out / 'checkpoints' / latest} at step {crashed_at}" in (out / "train.log").read_text()
    rows = read_metrics(out / "metrics.jsonl", kind="train")
    # rows of the first run (up to the crash), then the resumed run from the checkpoint's step on
    assert [r["step"] for r in rows[-(4 - crashed_at):]] == list(range(crashed_at + 1, 5))
    assert json.loads((out / "checkpoints" / "step_000004" / "trainer_state.json").read_text())["step"] == 4
    print(f"kill at step {crashed_at}: failed after {failed_after:.1f} s; resume took {resumed_s:.1f} s")
