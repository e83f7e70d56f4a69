"""Issue 30 items 5, 8 and 9 as a user meets them: `rl-div report` / `rl-div eval` on a missing path or a
model folder without a tokenizer print one line and exit 2 (they printed 16- and 37-line tracebacks);
`rl-div bench --help` names every section the README runs; a report honours --title, puts its headline
column at the largest k evaluated, keeps intervals on one line, titles panels in words, lightens bands
when many variants overlap, and states the command and package versions that wrote it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import N, markdown_table, write_compare_dir, write_run

REPO = Path(__file__).resolve().parent.parent


def rl_div(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl_div.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_report_on_a_missing_or_empty_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert one_line(rl_div("report", missing)) == f"rl-div: report: {missing!r} does not exist"
    (tmp_path / "empty").mkdir()
    assert one_line(rl_div("report", str(tmp_path / "empty"))).startswith("rl-div: report: no runs")


def test_eval_on_a_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert one_line(rl_div("eval", missing)) == f"rl-div: MODEL {missing!r} does not exist"
    assert one_line(rl_div("eval", str(tmp_path))).startswith("rl-div: MODEL: ")  # a folder that is no model


def test_eval_on_a_model_folder_without_tokenizer(tmp_path: Path, bootstrapped_prime_gap: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (bootstrapped_prime_gap / name).exists():
            shutil.copy(bootstrapped_prime_gap / name, model / name)
    line = one_line(rl_div("eval", str(model)))
    assert line.startswith(f"rl-div: MODEL {str(model)!r}: no tokenizer in {model}")
    line = one_line(rl_div("eval", str(bootstrapped_prime_gap), "--reference", str(model)))
    assert line.startswith("rl-div: --reference") and "no tokenizer" in line


def test_bench_help_lists_every_section_the_readme_runs() -> None:
    used = {s for m in re.finditer(r"bench --sections ([a-z0-9_ ]+)", (REPO / "README.md").read_text())
            for s in m.group(1).split()}
    assert {"fsdp_50m", "sync", "sync_50m"} <= used
    done = rl_div("bench", "--help")
    assert done.returncode == 0
    listed = " ".join(done.stdout.split())  # argparse wraps the help text
    assert all(re.search(rf"\b{s}\b", listed) for s in used), used


def test_report_title_headline_k_one_line_intervals_and_provenance(tmp_path: Path) -> None:
    root = write_compare_dir(tmp_path / "cmp")
    done = rl_div("report", str(root), "--title", "Appendix B: GRPO vs ARM")
    assert done.returncode == 0, done.stderr
    md = (root / "report" / "report.md").read_text()
    page = (root / "report" / "report.html").read_text()
    assert md.startswith("# Appendix B: GRPO vs ARM\n") and "<title>Appendix B: GRPO vs ARM</title>" in page
    header = list(markdown_table(md, "variant")[0])
    assert f"pass@{N}" in header  # the largest k evaluated (n = 8), not a fixed 32 or a smaller k
    cells = re.findall(r"<td[^>]*>([^<]*\[[^<]*)</td>", page)
    assert cells and all(re.search(rf'<td class="n">{re.escape(c)}</td>', page) for c in cells)
    assert "td.n,td:first-child{white-space:nowrap}" in page
    assert f"Report command: rl-div report {root} --title 'Appendix B: GRPO vs ARM'" in md
    assert re.search(r"Packages: python [\d.]+, rl_div [\d.]+\S*, torch [\d.]+", md)


def test_panels_are_titled_in_words_and_bands_lighten_with_many_variants(tmp_path: Path) -> None:
    from rl_div.report.build import figures
    from rl_div.report.comparison import build_comparison
    from rl_div.report.plots import band_alpha
    from rl_div.report.results import RunRef, discover_runs, load_run, write_manifest

    root = tmp_path / "five"
    refs = []
    for i, name in enumerate(["grpo", "arm", "steer", "novelty", "passk"]):
        write_run(root / name / "seed0", name, 0, 0.2 + 0.1 * i)
        refs.append(RunRef(name, 0, root / name / "seed0"))
    write_manifest(root, "compare", refs)
    kind, found = discover_runs([root])
    runs = [load_run(r) for r in found]
    drawn: list = []
    import rl_div.report.build as build

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "save_figure", lambda fig, path: drawn.append((fig, Path(path).name)) or Path(path))
        figures(build_comparison(runs, kind, None), runs, tmp_path)
    # passk_over_steps has one panel per variant with two lines (pass@1, pass@K): its bands stay dark
    per_variant = [fig for fig, name in drawn if name == "passk_over_steps.png"]
    drawn = [fig for fig, name in drawn if name != "passk_over_steps.png"]
    assert {c.get_alpha() for fig in per_variant for ax in fig.axes for c in ax.collections} <= {band_alpha(2)}
    titles = [ax.get_title() for fig in drawn for ax in fig.axes if ax.get_title()]
    assert "embedding diversity (1 − mean pairwise cosine), held-out" in titles
    assert not [t for t in titles if re.search(r"\bdiv/|policy/", t)], titles  # no metric keys
    fills = [c.get_alpha() for fig in drawn for ax in fig.axes for c in ax.collections]
    assert fills and set(fills) == {band_alpha(5)} and band_alpha(5) < band_alpha(2)
