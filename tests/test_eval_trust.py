"""``rl-div eval RUN_DIR`` never trusts remote code because the evaluated folder's config.yaml says so
(issue 29 item 2): only the command line of the person running it (an override or their own --config)
may. The crafted run folder's model has an ``auto_map`` pointing at a Python file that writes a
marker file when imported, which transformers does only with trust_remote_code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_div.cli import main
from rl_div.config import ConfigError, load_config, save_config
from rl_div.experiments.evaluate import eval_config, resolve_target
from rl_div.run.manifest import write_manifest


def crafted_run(root: Path, trust: bool) -> tuple[Path, Path]:
    """A run folder (config.yaml, checkpoints/step_000001/policy/) whose model runs code on import."""
    run = root / "run"
    policy = run / "checkpoints" / "step_000001" / "policy"
    policy.mkdir(parents=True)
    marker = root / "code_ran"
    (policy / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil'\n")
    (policy / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["LlamaForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (policy.parent / "trainer_state.json").write_text(json.dumps({"step": 1}))
    write_manifest(policy.parent)  # a complete checkpoint, as a run commits it
    (run / "checkpoints" / "latest").write_text("step_000001")
    save_config(load_config(None, [f"model.trust_remote_code={str(trust).lower()}", f"run.output_dir={run}"]),
                run / "config.yaml")
    return run, marker


def test_the_folders_own_trust_remote_code_is_refused_in_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run, marker = crafted_run(tmp_path, trust=True)
    with pytest.raises(ConfigError, match="never trusts remote code because the evaluated folder says so"):
        eval_config(resolve_target(run), None, [])
    assert main(["eval", str(run), "--n", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.trust_remote_code=true" in err[0], err
    assert not marker.exists()


def test_trust_comes_only_from_the_command_line(tmp_path: Path) -> None:
    run, _ = crafted_run(tmp_path, trust=True)
    assert eval_config(resolve_target(run), None, ["model.trust_remote_code=true"]).model.trust_remote_code
    assert not eval_config(resolve_target(run), None, ["model.trust_remote_code=false"]).model.trust_remote_code
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  trust_remote_code: true\n")
    assert eval_config(resolve_target(run), str(mine), []).model.trust_remote_code
    plain, _ = crafted_run(tmp_path / "plain", trust=False)
    assert not eval_config(resolve_target(plain), None, []).model.trust_remote_code
