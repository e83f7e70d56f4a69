"""Who writes what under ``run.output_dir``, and a start-up check that every writer reaches it.

On a cluster the driver (the ``rl-div train`` process, or the entrypoint of a Ray job) and the
learner actor may run on different nodes, and both write into the same run directory:

    driver          config.yaml, train.log, metrics.jsonl, tensorboard/, eval/step_*.json,
                    groups/step_*.json (rollout.log_groups);
                    checkpoints/step_*.tmp/ (creates it), its trainer_state.json, the rename into
                    checkpoints/step_*/, the ``latest`` pointer and the pruning of old checkpoints
    learner actor   checkpoints/step_*.tmp/policy/ (model + tokenizer) and learner_state.pt
                    (optimizer, scheduler, RNG); it reads them back on --resume
    rollout, reward nothing (rollout actors read model.path, which must be readable on their nodes)

So ``run.output_dir`` must be one directory seen at the same absolute path by every node that runs a
writer: shared storage (NFS, Lustre, a mounted bucket), not a node's local disk. :func:`check_writers`
proves it before any work starts: each writer writes a probe file and reads it back, and the driver
must see every probe.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

import ray

from rl_div.config import ConfigError

log = logging.getLogger("rl_div")

PROBE_PREFIX = ".rl_div_probe_"
# Set by Ray's job supervisor for the entrypoint of a submitted job (ray job submit).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class OutputDirError(ConfigError):
    """run.output_dir cannot hold this run (not writable, or not shared by the nodes that write it)."""


def prepare_output_dir(output_dir: str | Path) -> Path:
    """The run directory as an absolute path (actors on other nodes have other working directories),
    created and writable by this process (the driver); else a one-line :class:`OutputDirError`."""
    path = Path(output_dir).expanduser()
    if not path.is_absolute() and RAY_JOB_ENV in os.environ:
        raise OutputDirError(
            f"run.output_dir {str(output_dir)!r} is relative, and this Ray job runs in Ray's temporary copy of "
            f"the working directory ({os.getcwd()}): pass an absolute path on shared storage, e.g. "
            f"run.output_dir=/shared/runs/{path.name}")
    path = path.absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{PROBE_PREFIX}driver_{uuid.uuid4().hex[:8]}"
        probe.write_text("driver")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"run.output_dir {path} is not writable by the driver on {socket.gethostname()}: "
                             f"{err.strerror or err}") from err
    return path


def check_writable(output_dir: str | Path) -> None:
    """One-line OutputDirError unless this process can write run.output_dir: a probe file written and
    removed in it, or in its nearest existing parent when it does not exist yet (which the run would
    create). Leaves nothing behind; works where permission bits do not tell (root, a read-only mount)."""
    path = Path(output_dir).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():  # a folder cannot be made below a file, even by root
        raise OutputDirError(f"run.output_dir {path} is not writable by the driver on {socket.gethostname()}: "
                             "Not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f"{PROBE_PREFIX}check_"):
            pass
    except OSError as err:
        where = "" if existing == path else f" (its parent {existing}, where it would be created)"
        raise OutputDirError(f"run.output_dir {path} is not writable by the driver on {socket.gethostname()}{where}: "
                             f"{err.strerror or err}") from None


def _write_probe(actor: Any, path: str, text: str) -> dict[str, Any]:
    """Runs inside a writer actor: write ``text`` to ``path`` and read it back. Never raises (the
    driver turns a failure into one line); returns where it ran and the OSError text, if any."""
    import rl_div

    where = {"host": socket.gethostname(), "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
             "rl_div": os.path.dirname(rl_div.__file__), "error": None}
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        if Path(path).read_text() != text:
            where["error"] = "the file read back differs from the one written"
    except OSError as err:
        where["error"] = err.strerror or str(err)
    return where


def _remove_probe(actor: Any, path: str) -> None:
    Path(path).unlink(missing_ok=True)


def check_writers(out: Path, writers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every writer actor (name -> handle) writes a probe file into ``out`` and reads it back, and this
    process (the driver) must read the same bytes: one-line :class:`OutputDirError` otherwise.

    Waits for the actors' constructors. Returns, per writer, where it runs (host, pid, Ray node id and
    the directory it imported rl_div from), also logged to train.log.
    """
    token = uuid.uuid4().hex
    probes = {name: out / f"{PROBE_PREFIX}{name}_{token[:8]}" for name in writers}
    futures = {name: actor.__ray_call__.remote(_write_probe, str(probes[name]), f"{name} {token}")
               for name, actor in writers.items()}
    places = {name: ray.get(future) for name, future in futures.items()}
    resources = {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes()}
    try:
        for name, where in places.items():
            node = f"node {where['node_id'][:12]} on {where['host']}"
            log.info("%s: %s (pid %d, custom resources %s), rl_div from %s", name, node, where["pid"],
                     {k: v for k, v in resources.get(where["node_id"], {}).items()
                      if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")},
                     where["rl_div"])
            if where["error"]:
                raise OutputDirError(f"run.output_dir {out} is not writable from the {name} actor ({node}): "
                                     f"{where['error']}")
            seen = probes[name].read_text() if probes[name].exists() else None
            if seen != f"{name} {token}":
                raise OutputDirError(
                    f"run.output_dir {out} is not shared storage: the {name} actor ({node}) wrote "
                    f"{probes[name].name} there but the driver on {socket.gethostname()} does not see it; mount one "
                    "directory at the same path on every node (NFS, Lustre, ...) and point run.output_dir at it")
    finally:
        for name, actor in writers.items():  # the driver's view, and the writer's if it differs
            probes[name].unlink(missing_ok=True)
            actor.__ray_call__.remote(_remove_probe, str(probes[name]))
    return places
