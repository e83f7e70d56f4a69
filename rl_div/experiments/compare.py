"""``rl-div compare``: train every variant x seed on identical prompts, seeds and evaluation sets, then
write one comparison (rl_div.report).

Layout: OUT/<variant>/seed<k>/ is a normal run directory (run.seed = k, run.name = variant), OUT/runs.json
the manifest, OUT/report/ the exports. The variant name is the config's run.name (``_2``, ``_3`` ...
appended when two configs share one).

Restartable: a run is complete when its final evaluation (eval/step_<steps>.json) and final checkpoint
exist; such runs are skipped. A run with a checkpoint resumes from it (Trainer resume=True); a run that
never reached a checkpoint restarts from step 0 with its partial outputs cleared. An existing run
whose saved config differs from the planned one (other than cluster/tracking/schedule fields) is an
error rather than silently mixed into the comparison.

Execution: in turn in this process by default, sharing one Ray instance. ``jobs > 1`` launches up to
that many ``rl-div train --resume`` subprocesses at once; without RAY_ADDRESS each starts its own
local Ray (CPUs are shared, i.e. oversubscribed), with RAY_ADDRESS they share that cluster, which
must have room for all their actors at once (the Trainer places actors one by one, so jobs competing
for the last CPUs/GPUs can wait on each other).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rl_div.config import Config, ConfigError, load_config, save_config
from rl_div.config.checks import check_inputs
from rl_div.config.tree import config_differences, saved_config_tree, set_fields
from rl_div.report.provenance import code_version
from rl_div.report.results import RunRef, write_manifest
from rl_div.run.checkpoint import claim_output_dir
from rl_div.train.prompts import load_splits

log = logging.getLogger("rl_div")

# Fields that must be equal across variants so that they see the same prompts and evaluation.
# rollout.num_workers: evaluation sampling seeds are per rollout shard, so it changes the samples.
MUST_MATCH = ("data.", "eval.n", "eval.temperature", "eval.at_start", "rollout.top_p", "rollout.top_k",
              "rollout.max_new_tokens", "rollout.stop", "rollout.num_workers")


@dataclass
class PlannedRun:
    variant: str
    seed: int
    config: Config

    @property
    def dir(self) -> Path:
        return Path(self.config.run.output_dir)

    @property
    def ref(self) -> RunRef:
        return RunRef(self.variant, self.seed, self.dir)


def _dir_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+-]+", "_", name).strip("._") or "variant"


def plan(config_paths: list[str], seeds: list[int], out: str | Path, overrides: list[str]) -> list[PlannedRun]:
    """Every variant x seed, with run.seed, run.name and run.output_dir set; checks the variants agree on
    data and evaluation so that the comparison is like for like."""
    out = Path(out)
    variants: list[tuple[str, Config]] = []
    used: set[str] = set()
    for path in config_paths:
        cfg = load_config(path, overrides)
        name, i = _dir_name(cfg.run.name), 1
        while name in used:
            i += 1
            name = f"{_dir_name(cfg.run.name)}_{i}"
        used.add(name)
        variants.append((name, cfg))
    first_name, first = variants[0]
    for name, cfg in variants[1:]:
        diff = [k for k in config_differences(first.model_dump(mode="json"), cfg.model_dump(mode="json"), ())
                if k.startswith(MUST_MATCH)]
        if diff:
            raise ConfigError(f"variants {first_name!r} and {name!r} would not see the same prompts/evaluation: "
                              f"they differ in {', '.join(diff)} (align them with key=value overrides)")
    # One W&B group per comparison: the seeds and variants of OUT.
    return [PlannedRun(name, seed, set_fields(cfg, {"run.seed": seed, "run.name": name,
                                                     "run.output_dir": str(out / name / f"seed{seed}"),
                                                     "tracking.wandb_group": cfg.tracking.wandb_group
                                                     or out.resolve().name}))
            for name, cfg in variants for seed in seeds]


def run_status(run: PlannedRun) -> str:
    """'complete', 'resume' (has a checkpoint) or 'new'; raises if the directory holds another config."""
    from rl_div.run.checkpoint import latest_checkpoint

    saved = run.dir / "config.yaml"
    if not saved.exists():
        return "new"
    diff = config_differences(saved_config_tree(saved), run.config.model_dump(mode="json"))
    if diff:
        raise ConfigError(f"{run.dir} holds a run with another config (differs in {', '.join(diff)}); "
                          "use another --out or delete it")
    steps = run.config.train.steps
    # The final evaluation is what a comparison needs; its checkpoint may have been pruned or
    # deleted to save space, and a finished run must never be cleared and retrained for that.
    if (run.dir / "eval" / f"step_{steps:06d}.json").exists():
        return "complete"
    return "resume" if latest_checkpoint(run.dir) is not None else "new"


def local_ray_mismatch(cfg: Config, running_cpus: float | None) -> bool:
    """Whether a local Ray started for an earlier run (running_cpus CPUs; None = none running)
    differs from the one cfg asks for (cluster.num_cpus; None = this machine's cores)."""
    if running_cpus is None or cfg.cluster.address:
        return False
    import os

    return running_cpus != (cfg.cluster.num_cpus or os.cpu_count())


def run_in_process(run: PlannedRun, status: str) -> None:
    """train() in this process. The local Ray an earlier run started is kept (seconds per run)
    unless this run asks for another size (e.g. 2 FSDP2 learners with cluster.num_cpus=4 after a
    single learner's run with all cores): then it is restarted with this run's."""
    import ray

    from rl_div.train.loop import train

    running = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
    if local_ray_mismatch(run.config, running):
        ray.shutdown()
    train(run.config, resume=status == "resume")


def run_in_subprocesses(todo: list[tuple[PlannedRun, str]], jobs: int, out: Path) -> None:
    """Up to ``jobs`` concurrent ``rl-div train CONFIG --resume`` processes; fails if any run fails."""
    cfg_dir = out / ".compare"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(todo), [], []
    while pending or running:
        while pending and len(running) < jobs:
            run, _ = pending.pop(0)
            cfg_path = cfg_dir / f"{run.variant}-seed{run.seed}.yaml"
            save_config(run.config, cfg_path)
            run.dir.mkdir(parents=True, exist_ok=True)
            logf = open(run.dir / "compare_job.log", "ab")  # noqa: SIM115 - closed when the job ends
            cmd = [sys.executable, "-m", "rl_div.cli", "train", str(cfg_path), "--resume"]
            running.append((run, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), logf))
            print(f"[compare] started {run.variant} seed {run.seed} (log: {run.dir / 'compare_job.log'})")
        time.sleep(1.0)
        for item in running[:]:
            run, proc, logf = item
            if proc.poll() is not None:
                running.remove(item)
                logf.close()
                print(f"[compare] {run.variant} seed {run.seed} finished with exit code {proc.returncode}")
                if proc.returncode != 0:
                    failed.append(f"{run.variant}/seed{run.seed}")
    if failed:
        raise RuntimeError(f"runs failed: {', '.join(failed)} (see their compare_job.log)")


def compare(config_paths: list[str], seeds: list[int], out: str | Path, overrides: list[str] | None = None,
            jobs: int = 1, report: bool = True, baseline: str | None = None) -> Path:
    """Run what is missing of the variant x seed grid, write the manifest and the report; returns OUT."""
    out = Path(out)
    runs = plan(config_paths, seeds, out, list(overrides or []))
    statuses = [(run, run_status(run)) for run in runs]
    for run, status in statuses:
        print(f"[compare] {run.variant} seed {run.seed}: {status}")
    todo = [(run, status) for run, status in statuses if status != "complete"]
    for run, _ in todo:  # every variant's model, data and data split, before the first run trains
        check_inputs(run.config)
        load_splits(run.config.data, run.config.run.seed)
    for run, status in todo:
        if status == "new":  # never checkpointed: it restarts from step 0 without its partial outputs
            claim_output_dir(run.dir, resume=False, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, "compare", [r.ref for r in runs],
                   {"configs": [str(Path(p).resolve()) for p in config_paths], "seeds": seeds,
                    "overrides": list(overrides or []), "code": code_version()})
    if jobs > 1 and len(todo) > 1:
        run_in_subprocesses(todo, jobs, out)
    else:
        for run, status in todo:
            print(f"[compare] training {run.variant} seed {run.seed} ({status})")
            run_in_process(run, status)
    unfinished = [f"{r.variant}/seed{r.seed}" for r in runs if run_status(r) != "complete"]
    if unfinished:
        raise RuntimeError(f"runs did not finish: {', '.join(unfinished)}")
    if report:
        from rl_div.report import build_report

        files = build_report([out], out / "report", baseline=baseline)
        print(f"[compare] report: {files['report_md']} and {files['report_html']}")
    return out
