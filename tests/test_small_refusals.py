"""Issue 29 item 10's small ones: an empty config file and a prompt template with a format spec or
conversion are refused at config load, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_div.cli import main
from rl_div.config import ConfigError, load_config


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])  # an explicit {} still means the defaults
def test_an_empty_config_file_is_refused(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is empty"):
        load_config(str(path))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rl-div: the config file {str(path)!r} is empty: give at least one setting (or inherit: "
                   "configs/demo.yaml)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]  # nothing written


@pytest.mark.parametrize("template", ["{prompt:>99999999999}", "Q: {prompt!r}", "{prompt!s:^10}"])
def test_a_template_field_with_a_format_spec_or_conversion_is_refused(template: str) -> None:
    with pytest.raises(ConfigError, match="only the plain placeholder {prompt} is allowed"):
        load_config(None, [f"data.prompt_template='{template}'"])


def test_plain_templates_still_load() -> None:
    assert load_config(None, ["data.prompt_template='Q: {prompt} {{x}}\\nA:'"]).data.prompt_template == \
        "Q: {prompt} {{x}}\\nA:"
