"""A local run's Ray (no --address) listens on the loopback address only (issue 29 item 3).

A fresh Python process starts Ray through rl_div's own init_ray and runs one task (so a worker and
the agents are up); this test then reads the kernel's table of listening TCP sockets
(/proc/net/tcp, /proc/net/tcp6) and keeps those owned by that process or its descendants (their
/proc/<pid>/fd links), so other Ray clusters on the machine do not count. No connection is made.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if not Path("/proc/net/tcp").exists():
    pytest.skip("reads Linux's /proc/net/tcp", allow_module_level=True)

LISTEN = "0A"

START_RAY = textwrap.dedent("""
    import sys, ray
    from rl_div.cluster.actors import init_ray
    from rl_div.config import load_config
    init_ray(load_config(None, ["cluster.num_cpus=2"]))  # room for the default run's learner and rollout actor
    ray.get(ray.remote(lambda: 1).remote())
    print("ready", flush=True)
    sys.stdin.readline()
    ray.shutdown()
""")


def listening_sockets() -> dict[int, str]:
    """inode -> 'address:port' of every listening TCP socket on this machine."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            out[int(fields[9])] = f"{ip}:{int(hex_port, 16)}"
    return out


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:  # the process ended meanwhile
        pass
    return inodes


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_a_local_run_listens_on_the_loopback_address_only(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.Popen([sys.executable, "-c", START_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=(tmp_path / "stderr").open("w"), text=True, env=env)  # a file: never blocks
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            proc.wait(timeout=60)
            raise AssertionError(f"Ray did not start: {(tmp_path / 'stderr').read_text()[-2000:]}")
        sockets = listening_sockets()
        owned = {}
        for pid in descendants(proc.pid):
            for inode in socket_inodes(pid):
                if inode in sockets:
                    owned[sockets[inode]] = Path(f"/proc/{pid}/comm").read_text().strip() if Path(
                        f"/proc/{pid}/comm").exists() else "?"
        assert len(owned) >= 3, owned  # GCS, raylet, the worker and agents at least: the sockets were found
        open_to_network = {a: who for a, who in owned.items() if not is_loopback(a)}
        assert not open_to_network, f"listening beyond 127.0.0.1 on {socket.gethostname()}: {open_to_network}"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
