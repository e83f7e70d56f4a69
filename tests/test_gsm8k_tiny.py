"""GSM8K through the whole pipeline (configs/gsm8k_tiny.yaml): real Qwen tokenizer and chat template,
math-verify on the '####' gold, Ray actors, evaluation and checkpoints. The model answers nonsense:
this checks the pipeline, not learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from rl_div.config import DataConfig, load_config
from rl_div.models.loading import load_tokenizer
from rl_div.run.tracking import read_metrics
from rl_div.train.loop import Trainer
from rl_div.train.prompts import load_prompts

REPO = Path(__file__).resolve().parent.parent
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not (GSM8K / "test.jsonl").exists(),
                                 reason=f"GSM8K data not found at {GSM8K} (../shared/data is not part of a clone)")
SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
# The first test question and its gold, read by hand from test.jsonl.
JANET = "Janet\u2019s ducks lay 16 eggs per day."


def first_rows(split: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (GSM8K / f"{split}.jsonl").read_text().splitlines()[:n]]


@pytest.mark.slow
@needs_gsm8k
def test_gsm8k_tiny_config_runs_through_ray(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    cfg = load_config(REPO / "configs" / "gsm8k_tiny.yaml", [
        f"bootstrap.cache_dir={tiny_qwen_dir.parent}",  # model.path=tiny_qwen finds the session's build
        f"data.path={GSM8K / 'train.jsonl'}", f"data.eval_path={GSM8K / 'test.jsonl'}",
        f"run.output_dir={tmp_path / 'run'}", "train.steps=2", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.max_new_tokens=24", "eval.n=4", "data.num_eval_prompts=2",
        "eval.every=0", "eval.at_start=false", "checkpoint.every=0", "tracking.progress=false",
        "tracking.tensorboard=false", "cluster.num_cpus=2",
        "train.skip_zero_signal_steps=false",  # all-wrong groups still run the 151k-vocab backward
    ])
    trainer = Trainer(cfg)
    try:
        assert Path(trainer.model_path) == tiny_qwen_dir
        trainer.run()
        batch = trainer.pipeline.generate(trainer.eval_prompts[:1], trainer.train_sampling(), salt=0)
    finally:
        trainer.close()
        ray.shutdown()
    out = Path(cfg.run.output_dir)
    # prompts: the chat template around the question and the instruction; gold from '####'
    record = trainer.eval_prompts[0]
    assert record.prompt.startswith(JANET) and record.answer == "18"
    tok = load_tokenizer(tiny_qwen_dir)
    shown = tok.decode(batch.prompt_ids[0][batch.prompt_mask[0].bool()])
    assert shown == (f"{SYSTEM}<|im_start|>user\n{record.prompt}\nReason step by step, then put the final answer "
                     "in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    # rewards scored without errors, metrics and checkpoint written
    rows = read_metrics(out / "metrics.jsonl", kind="train")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["faults/reward_errors"] == 0 and r["faults/reward_timeouts"] == 0 and r["reward/nan_frac"] == 0
        assert r["faults/nonfinite_loss"] == 0 and r["sync/logprob_gap_max"] < 1e-3
        assert r["train/optimizer_steps"] == 1
        assert 0 < r["policy/entropy"] <= 12.0  # log(151,936) = 11.93
    evaluation = json.loads((out / "eval" / "step_000002.json").read_text())
    assert evaluation["metrics"]["n"] == 4 and len(evaluation["problems"]) == 2
    assert evaluation["metrics"]["eval/reward_errors"] == 0
    assert any(k.startswith("pass@") for k in evaluation["metrics"])
    ckpt = out / "checkpoints" / "step_000002" / "policy"
    assert (ckpt / "model.safetensors").exists() and load_tokenizer(ckpt).eos_token_id == 151645


@needs_gsm8k
def test_hf_source_reads_the_splits_of_a_saved_dataset(tmp_path: Path) -> None:
    """data.source=hf on a directory written by datasets' save_to_disk (what load_dataset('openai/gsm8k',
    'main') gives, without a download): train and test splits by name, gold after '####'."""
    import datasets

    train, test = first_rows("train", 5), first_rows("test", 3)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "gsm8k"))
    cfg = DataConfig(source="hf", path=str(tmp_path / "gsm8k"), hf_config="main", answer_regex=r"####\s*(.+)",
                     num_eval_prompts=3)
    got_train = load_prompts(cfg, "train", seed=0).records
    got_eval = load_prompts(cfg, "eval", seed=0).records
    assert [r.prompt for r in got_train] == [r["question"] for r in train]
    assert [r.prompt for r in got_eval] == [r["question"] for r in test]
    assert got_eval[0].prompt.startswith(JANET) and got_eval[0].answer == "18"
    assert got_train[0].answer == "72"  # Natalia's clips: '#### 72'
    with pytest.raises(ValueError, match="splits"):
        load_prompts(cfg.model_copy(update={"eval_split": "validation"}), "eval", seed=0)
