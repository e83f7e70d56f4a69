"""The launch scripts parse, and launch/slurm_ray.sbatch issues Ray's documented SLURM recipe for a
(fake) 2-node allocation: head on the first node, a worker on the second, a poll for the nodes after
each, then the run on the head. No SLURM here: fake `scontrol` and `srun` answer the two queries the
script makes (node names, head IP); RL_DIV_DRY_RUN=1 prints the commands instead of running them."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
SCRIPTS = sorted(p.name for p in (REPO / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))

FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || { echo "unexpected: scontrol $*" >&2; exit 1; }
printf 'gpu07\\ngpu08\\n'
"""
FAKE_SRUN = """#!/usr/bin/env bash
# only the head-IP query may run for real in a dry run
[ "$*" = "--nodes=1 --ntasks=1 -w gpu07 hostname --ip-address" ] || { echo "unexpected: srun $*" >&2; exit 1; }
echo "fe80::1ff:fe23:4567 10.1.2.7"
"""


@pytest.mark.parametrize("script", SCRIPTS)
def test_launch_scripts_parse(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(REPO / "launch" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_slurm_script_dry_run_for_a_two_node_allocation(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "RL_DIV_DRY_RUN": "1",
           "RL_DIV_VENV": str(tmp_path / "no_venv"), "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "32", "SLURM_GPUS_PER_NODE": "h100:8"}
    override = "reward.rewards=[{name: math_verify}, {name: novelty, weight: 0.5}]"
    done = subprocess.run(["bash", str(REPO / "launch" / "slurm_ray.sbatch"), "configs/gsm8k_qwen.yaml",
                           "run.output_dir=/shared/runs/q", override], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "rl_div: 2 nodes (gpu07 gpu08); Ray head gpu07 at 10.1.2.7:6379; 32 CPUs, 8 GPUs per node"
    srun = ["srun", "--nodes=1", "--ntasks=1", "-w"]
    wait = ["python", "-m", "rl_div.cluster.nodes", "--address", "10.1.2.7:6379", "--nodes"]
    assert [shlex.split(line) for line in lines[1:]] == [
        [*srun, "gpu07", "ray", "start", "--head", "--node-ip-address=10.1.2.7", "--port=6379", "--num-cpus=32",
         "--num-gpus=8", "--block", "&"],
        [*wait, "1", "--timeout-s", "300"],
        [*srun, "gpu08", "ray", "start", "--address=10.1.2.7:6379", "--num-cpus=32", "--num-gpus=8", "--block", "&"],
        [*wait, "2", "--timeout-s", "300"],
        ["rl-div", "train", "configs/gsm8k_qwen.yaml", "run.output_dir=/shared/runs/q", override,
         "--address", "10.1.2.7:6379"],
    ]


def test_ray_job_submit_needs_an_address() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    done = subprocess.run(["bash", str(REPO / "launch" / "ray_job_submit.sh"), "configs/demo.yaml"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "set RAY_ADDRESS" in done.stderr


def test_waiting_for_nodes_of_a_head_that_never_starts_times_out_with_one_line() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "rl_div.cluster.nodes", "--address", f"127.0.0.1:{port}",
                           "--nodes", "2", "--timeout-s", "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(f"rl_div.cluster.nodes: no Ray head listening at 127.0.0.1:{port} after 1 s")


@pytest.mark.parametrize(("mode", "uninstalls"), [("cpu", True), ("keep", False)])
def test_setup_removes_cuda_linked_extras_only_next_to_a_cpu_torch(tmp_path: Path, mode: str,
                                                                   uninstalls: bool) -> None:
    """launch/setup.sh: torchvision/torchaudio/torchcodec go only in CPU mode; on a GPU machine (the CUDA
    torch kept) vLLM pins them. A fake venv python records the pip commands the script runs."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    (venv / "bin" / "python").write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    (venv / "bin" / "python").chmod(0o755)
    env = {**os.environ, "RL_DIV_VENV": str(venv), "RL_DIV_TORCH": mode}
    done = subprocess.run(["bash", str(REPO / "launch" / "setup.sh"), "vllm"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert any("install -q -e .[dev,vllm]" in c for c in calls), calls
    assert any("uninstall" in c and "torchvision" in c for c in calls) == uninstalls, calls
