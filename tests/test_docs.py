"""The docs are tested like code: links lead somewhere, marked examples run on the demo models, what is generated
is complete, and CI installs what the README says (the site itself is built with --strict by .ci/run)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from instantstyle.app.cli import main, run_in_process

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
OFFLINE = re.compile(r"<!-- offline -->\n```(?:bash|sh)\n(.*?)```", re.S)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def offline_blocks() -> list:
    """Every code block marked ``<!-- offline -->``, with its page and line as its test id."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in OFFLINE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    return found


def command_lines(block: str) -> list[str]:
    """A block's commands: continued lines joined, blank lines dropped."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def readme_first_command() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- first-command -->\n```bash\n(.*?)\n", text)
    assert match, "README.md has no <!-- first-command --> block"
    return match.group(1)


def test_the_docs_have_offline_examples():
    assert len(offline_blocks()) >= 3


@pytest.mark.parametrize("block", offline_blocks())
def test_an_offline_example_runs_on_the_demo_models(block, demo_root, monkeypatch, capsys):
    """Each example runs as for a reader who opened its page first: no output of another example is there (the
    examples' outputs go under ``demo/out``), so an example that needs one fails in any test order, not in some."""
    shutil.rmtree(demo_root / "demo" / "out", ignore_errors=True)
    monkeypatch.chdir(demo_root)
    for line in command_lines(block):
        if line.startswith("instantstyle "):  # in this process: the same command line, without a new interpreter
            code = run_in_process(shlex.split(line, comments=True)[1:])
        else:
            code = subprocess.run(["bash", "-c", line], cwd=demo_root).returncode
        assert code == 0, f"{line}: exit {code}\n{capsys.readouterr().err[-2000:]}"


def test_every_relative_link_of_the_readme_leads_to_a_file():
    pending = hooks.pending_pages(ROOT / "docs")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [t for t in targets if "://" not in t]
    missing = [t for t in local if not (ROOT / t).exists() and t.removeprefix("docs/") not in pending]
    assert local and not missing


def test_the_cli_reference_names_every_command_and_flag():
    import click

    reference = hooks.cli_reference()
    ctx = click.Context(main, info_name="instantstyle")
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None and f"\n## {name}\n" in reference
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert f"`{param.opts[0]}" in reference or f" {param.opts[0]}" in reference, (name, param.opts)


def test_the_benchmark_tables_come_from_the_committed_json():
    page = (ROOT / "docs" / "performance.md").read_text()
    assert "<!-- generated: benchmark " in page
    expanded = hooks.expand(page)
    assert "<!-- generated" not in expanded and "| (c) instantstyle" in expanded


def test_new_pages_join_the_navigation_and_absent_ones_are_left_out(tmp_path):
    for page in ("index.md", "restyle.md", "zz-new.md", "reference/cli.md"):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text("# x\n")
    nav = hooks.navigation(tmp_path)
    assert nav == [{"Start": ["index.md"]}, {"Guides": ["restyle.md", "zz-new.md"]},
                   {"Reference": ["reference/cli.md"]}]


def test_every_path_of_the_fixture_layout_exists_in_a_built_demo(demo_root):
    text = (ROOT / "docs" / "fixtures.md").read_text()
    block = re.search(r"<!-- fixture-layout -->\n```text\n(.*?)```", text, re.S)
    assert block
    stack: list[tuple[int, str]] = []
    paths = []
    for line in block.group(1).splitlines():
        indent, name = len(line) - len(line.lstrip()), line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([*(part for _, part in stack), name.rstrip("/")])
        paths.append(path)
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
    built = [p for p in paths if not p.startswith("out")]
    assert len(built) > 40 and [p for p in built if not (demo_root / "demo" / p).exists()] == []


def test_ci_installs_exactly_what_the_readme_says():
    steps = [step.strip() for step in readme_first_command().split("&&")]
    installs = [step for step in steps if step.startswith(("pip ", "python3 -m venv"))]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert len(installs) == 3 and all(step in ci for step in installs), installs
    assert steps[-1] == "instantstyle demo demo --run"
