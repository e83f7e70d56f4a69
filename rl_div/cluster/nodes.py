"""Wait until a Ray cluster has its nodes: ``python -m rl_div.cluster.nodes --address HEAD:6379 --nodes 4``.

launch/slurm_ray.sbatch polls with it (rather than sleeping) after starting the head and after
starting the workers; exit 0 once enough nodes are alive, 1 with a one-line message on timeout.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


def wait_for_nodes(address: str, nodes: int, timeout_s: float, poll_s: float = 1.0) -> int:
    """Connect to the cluster at ``address`` and poll until ``nodes`` are alive; returns the count.

    Raises TimeoutError (after ``timeout_s``) naming how many of the nodes registered.
    """
    deadline = time.monotonic() + timeout_s
    host, port = address.rsplit(":", 1)
    while True:  # the head's GCS may not listen yet (ray.init would block for minutes on a dead address)
        try:
            socket.create_connection((host, int(port)), timeout=poll_s).close()
            break
        except OSError as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Ray head listening at {address} after {timeout_s:.0f} s: {err}") from err
            time.sleep(poll_s)
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        while (count := alive_nodes()) < nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} of {nodes} Ray nodes registered at {address} after {timeout_s:.0f} s")
            time.sleep(poll_s)
        return count
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl_div.cluster.nodes", description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="GCS address of the head, HOST:PORT (e.g. 10.0.0.1:6379).")
    parser.add_argument("--nodes", type=int, required=True, help="Nodes to wait for (head included).")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="Give up after this many seconds.")
    args = parser.parse_args(argv)
    try:
        count = wait_for_nodes(args.address, args.nodes, args.timeout_s)
    except TimeoutError as err:
        print(f"rl_div.cluster.nodes: {err}", file=sys.stderr)
        return 1
    print(f"{count} Ray nodes alive at {args.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
