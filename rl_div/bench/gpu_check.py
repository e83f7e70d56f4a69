"""The GPU check: rl_div's GPU paths run on one accelerator with torch + transformers only.

    python -m rl_div.bench.gpu_check [--size 0.5b|tiny] [--deadline-s 400] [--out DIR]

No Ray, no vLLM, no network, and no pydantic needed: the learner is built from a config snapshot
(``gpu_check_config.json``, the full ``Config`` defaults; validated by the real ``Config`` when
pydantic is there, a plain namespace otherwise; tests/test_gpu_check.py keeps the snapshot equal to
``Config()``). The policy is a random-initialised Qwen2 with Qwen2-0.5B's shapes (24 layers, width
896, grouped-query attention 14/2, vocabulary 151,936, tied head) built on the device. The checks
(rl_div.bench.gpu_sections) write a pass/fail table (``gpu_check.md``) and every number
(``gpu_check.json``) into --out; the run stops at its own deadline (sections not reached are
SKIPPED, one past it is cut off and FAILS), so it fits the 7-minute slot of a lent GPU.

On a machine without CUDA it runs the same code on CPU with gloo (``--size tiny``): that is what
tests/test_gpu_check.py does in CI, so an API change breaks CI, not the GPU run. docs/gpu.md says how
to run it and holds the last table measured on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rl_div.bench.gpu_sections import CONFIG_SNAPSHOT, SECTIONS, Env, Row, config_snapshot

SIZES = {  # Qwen2-0.5B's shapes, and a tiny one for CPU
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151_936},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 4096},
}
WORKLOAD = {"0.5b": {"rows": 32, "prompt": 128, "response": 512, "micro": 8, "head_rows": 8192},
            "tiny": {"rows": 8, "prompt": 8, "response": 16, "micro": 4, "head_rows": 64}}


def build_model(size: str, device: torch.device, folder: Path) -> tuple[str, dict[str, int]]:
    """A random-initialised Qwen2 of the given shapes with a character tokenizer, saved to folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rl_div.models.loading import build_char_tokenizer

    dims = SIZES[size]
    tok = build_char_tokenizer()
    cfg = Qwen2Config(**dims, tie_word_embeddings=True, max_position_embeddings=4096, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder), dims


class Deadline(Exception):
    """Raised by the alarm inside a section that runs past the check's deadline."""


def run_sections(env: Env, sections: dict[str, Callable[[Env], list[Row]]], deadline: float) -> list[Row]:
    """Each section in turn; one that raises is a FAIL row, one past the deadline is cut off (FAIL)
    and those after it are SKIPPED."""
    rows: list[Row] = []

    def alarm(*_: Any) -> None:
        raise Deadline

    use_alarm = hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, alarm)
    cut_off = False
    for name, section in sections.items():
        left = deadline - time.monotonic()
        if cut_off or left <= 0:
            rows.append(Row(name, "not run", "before the deadline", False, {"skipped": "deadline"}))
            continue
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, left)
        started = time.monotonic()
        try:
            rows += section(env)
        except Deadline:
            cut_off = True
            rows.append(Row(name, "cut off", "before the deadline", False, {"error": "deadline"}))
        except Exception as err:  # noqa: BLE001 (a failed check is a FAIL row; the others still run)
            rows.append(Row(name, f"{type(err).__name__}: {err}"[:300], "no error", False))
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
            gc.collect()  # the section's learners go before the next one loads its own
            if env.device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"[gpu_check] {name}: {time.monotonic() - started:.1f} s", flush=True)
    return rows


def markdown_table(rows: list[Row], header: dict[str, Any]) -> str:
    lines = [f"GPU check on {header['device_name']} (torch {header['torch']}, transformers "
             f"{header['transformers']}, size {header['size']}, {header['seconds']:.0f} s)", "",
             "| check | value | passes when | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.check} | {r.value} | {r.threshold} | {r.result} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default=None, help="default: 0.5b on CUDA, tiny on CPU")
    ap.add_argument("--deadline-s", type=float, default=400.0, help="the whole check's own time limit")
    ap.add_argument("--out", default=os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_"))
    ap.add_argument("--write-config-snapshot", action="store_true",
                    help="rewrite gpu_check_config.json from the current Config defaults (needs pydantic) and exit")
    args = ap.parse_args(argv)
    if args.write_config_snapshot:
        CONFIG_SNAPSHOT.write_text(json.dumps(config_snapshot(), indent=1, sort_keys=True) + "\n")
        return 0
    started = time.monotonic()
    deadline = started + args.deadline_s
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("0.5b" if device.type == "cuda" else "tiny")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, dims = build_model(size, device, Path(tmp) / "model")
        env = Env(device, model_path, size, dims, WORKLOAD[size], out)
        rows = run_sections(env, SECTIONS, deadline)
    import transformers

    header = {"device_name": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
              "torch": torch.__version__, "transformers": transformers.__version__, "size": size,
              "seconds": time.monotonic() - started}
    table = markdown_table(rows, header)
    (out / "gpu_check.md").write_text(table)
    (out / "gpu_check.json").write_text(json.dumps({**header, "rows": [asdict(r) for r in rows]}, indent=1,
                                                   default=str))
    print(table, flush=True)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
