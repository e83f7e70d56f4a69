"""Real Ray nodes for the cluster tests: ``ray start --block`` processes on free ports, each in its own
process group (so a test stops exactly the processes it started, never another Ray on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).parent.parent
VENV_BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node_env(pythonpath: list[str] | None) -> dict[str, str]:
    """The environment of a node as a user starts it: the venv's bin first on PATH, no downloads;
    PYTHONPATH only when given (a job's code travels as its working_dir instead)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RAY_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return env


class RayNode:
    """One ``ray start --block`` (head, or a worker joining ``head``); ``stop()`` ends its process group."""

    def __init__(self, head: RayNode | None = None, *, num_cpus: int = 1, resources: dict[str, float] | None = None,
                 dashboard: bool = False, pythonpath: list[str] | None = None, env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.temp_dir = head.temp_dir if head else tempfile.mkdtemp(prefix="rdray")  # short: socket paths
        ports = free_ports(10)
        while any(ports[8] <= p <= ports[8] + 200 for i, p in enumerate(ports) if i != 8):
            ports = free_ports(10)  # Ray refuses a component port inside the worker port range
        self.port, self.dashboard_port = ports[0], ports[1]
        args = [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}",
                "--num-gpus=0", f"--resources={json.dumps(resources or {})}", f"--temp-dir={self.temp_dir}",
                f"--node-manager-port={ports[2]}", f"--object-manager-port={ports[3]}",
                f"--dashboard-agent-listen-port={ports[4]}", f"--dashboard-agent-grpc-port={ports[5]}",
                f"--runtime-env-agent-port={ports[6]}", f"--metrics-export-port={ports[7]}",
                f"--min-worker-port={ports[8]}", f"--max-worker-port={ports[8] + 200}"]
        if head is None:
            args += ["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                     f"--ray-client-server-port={ports[9]}", f"--include-dashboard={str(dashboard).lower()}",
                     f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1"]
            self.address = f"127.0.0.1:{self.port}"
        else:
            args += [f"--address={head.address}", "--node-ip-address=127.0.0.1"]
            self.address = head.address
        self.log = Path(self.temp_dir) / f"ray_start_{ports[2]}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([*(wrapper or []), *args], env={**node_env(pythonpath), **(env or {})},
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def pids(self) -> list[int]:
        """Every live process of this node: its process group (ray start, raylet, GCS, agents) and their
        descendants (Ray workers start their own process groups)."""
        parent, group = {}, {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                parent[int(entry.name)], group[int(entry.name)] = int(fields[1]), int(fields[2])
        mine = {pid for pid, pgid in group.items() if pgid == self.proc.pid}
        while True:
            more = {pid for pid, ppid in parent.items() if ppid in mine} - mine
            if not more:
                return sorted(mine)
            mine |= more

    def raylet_pid(self) -> int:
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except FileNotFoundError:
                continue
        raise RuntimeError(f"no raylet in the process group of {self.proc.pid}:\n{self.log.read_text()[-2000:]}")

    def kill_raylet(self) -> None:
        os.kill(self.raylet_pid(), signal.SIGKILL)

    def stop(self) -> None:
        """SIGKILL every process of this node (a test cluster needs no graceful shutdown)."""
        for _ in range(3):  # a worker may be forked while we kill
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.proc.wait(timeout=10)


def wait_for_nodes(head: RayNode, nodes: int, timeout_s: float = 60.0) -> None:
    """The launch scripts' own wait (python -m rl_div.cluster.nodes), run as a user would."""
    cmd = [sys.executable, "-m", "rl_div.cluster.nodes", "--address", head.address, "--nodes", str(nodes),
           "--timeout-s", str(timeout_s)]
    done = subprocess.run(cmd, env=node_env([str(REPO)]), capture_output=True, text=True, timeout=timeout_s + 30)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nhead log:\n{head.log.read_text()[-3000:]}"
