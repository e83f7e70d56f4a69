"""The GPU check (rl_div.bench.gpu_check) at tiny sizes on CPU with gloo, as the GPU machine runs it:
torch + transformers only (pydantic, Ray and vLLM blocked), so an API change breaks CI, not the GPU run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from rl_div.bench.gpu_check import run_sections
from rl_div.bench.gpu_sections import CONFIG_SNAPSHOT, Env, Row, config_snapshot

REPO = Path(__file__).resolve().parent.parent
BLOCKED_RUN = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pydantic", "ray", "vllm"):
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, Block())
from rl_div.bench.gpu_check import main
rc = main(sys.argv[1:])
assert not {"pydantic", "ray", "vllm"} & set(sys.modules), "imported a blocked package"
raise SystemExit(rc)
"""


def test_config_snapshot_is_the_current_config_defaults() -> None:
    """The snapshot the check builds its learners from when pydantic is missing; after a config change
    rewrite it with `python -m rl_div.bench.gpu_check --write-config-snapshot`."""
    assert json.loads(CONFIG_SNAPSHOT.read_text()) == config_snapshot(), (
        "rl_div/bench/gpu_check_config.json is stale: python -m rl_div.bench.gpu_check --write-config-snapshot")


def test_gpu_check_runs_on_cpu_without_pydantic_ray_or_vllm(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", BLOCKED_RUN, "--size", "tiny", "--deadline-s", "300",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["check"]: r for r in result["rows"]}
    assert all(r["passed"] is not False for r in rows.values()), rows
    for check in ("bf16 vs fp32 log-prob error", "chunked head vs full logits (V=4096, 64 rows)",
                  "update throughput", "optimizer offload: 2 updates vs no offload",
                  "FSDP2 world 1 (gloo) vs single learner", "bf16 vs fp32 chunked head (V=4096, 64 rows)"):
        assert rows[check]["passed"] is True, check
    assert rows["CUDA IPC round trip"]["passed"] is None  # CUDA only
    assert rows["bf16 vs fp32 log-prob error"]["details"]["fp32_entropy_mean"] < 3.0  # sharpened
    assert "| FSDP2 world 1 (gloo) vs single learner |" in (tmp_path / "gpu_check.md").read_text()


def test_a_section_past_the_deadline_is_cut_off_and_the_rest_skipped(tmp_path: Path) -> None:
    env = Env(torch.device("cpu"), "", "tiny", {}, {}, tmp_path)

    def slow(_: Env) -> list[Row]:
        time.sleep(120)
        return [Row("slow", "done", "", True)]

    started = time.monotonic()
    rows = run_sections(env, {"fast": lambda _: [Row("fast", "1", "", True)], "slow": slow,
                              "after": lambda _: [Row("after", "1", "", True)]}, started + 8)
    assert time.monotonic() - started < 60
    assert [(r.check, r.passed) for r in rows] == [("fast", True), ("slow", False), ("after", False)]
    assert rows[1].details == {"error": "deadline"} and rows[2].details == {"skipped": "deadline"}
