"""mkdocs hooks: what the docs site generates at build time instead of copying it by hand.

- the navigation, from the pages in ``docs/`` (known pages in a set order; any other page joins the guides, so a
  new ``docs/NAME.md`` needs no edit of ``mkdocs.yml``, and a listed page that does not exist is left out);
- the home page's body from ``README.md`` (``<!-- generated: readme -->``), its links rewritten for the site;
- the CLI reference from the click commands themselves (``<!-- generated: cli-reference -->``);
- benchmark sections from the JSON ``benchmarks/bench.py --json`` writes
  (``<!-- generated: benchmark FILE KEY [KEY...] -->``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: The navigation: known pages by section, in order. Pages other branches add (restyle, csgo, video, web-ui,
#: architecture) are listed where they belong and left out while absent; unknown pages join "Guides".
SECTIONS: dict[str, list[str]] = {
    "Start": ["index.md", "install.md", "fixtures.md"],
    "Guides": ["generate.md", "blocks.md", "modes.md", "restyle.md", "csgo.md", "hidiffusion.md", "video.md",
               "loras-schedulers.md", "families.md", "memory.md", "ui.md", "web-ui.md", "sweep.md", "batch.md",
               "scores.md", "python-api.md"],
    "Reference": ["reference/cli.md", "reference/api.md", "careless-input.md", "performance.md"],
    "Development": ["architecture.md", "code-layout.md", "testing.md"],
}
MARKER = re.compile(r"<!-- generated: (?P<what>[\w-]+)(?P<args>[^>]*?)\s*-->")


def navigation(docs: Path) -> list[dict[str, list[str]]]:
    """The nav: every ``.md`` page under ``docs``, the known ones in ``SECTIONS`` order, the others under Guides."""
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    known = {page for listed in SECTIONS.values() for page in listed}
    nav = []
    for section, listed in SECTIONS.items():
        present = [page for page in listed if page in pages]
        if section == "Guides":
            present += [page for page in pages if page not in known]
        if present:
            nav.append({section: present})
    return nav


def pending_pages(docs: Path) -> set[str]:
    """Pages the navigation lists that are not in ``docs`` yet (other branches add them)."""
    return {page for listed in SECTIONS.values() for page in listed if not (docs / page).is_file()}


def readme_for_site(text: str, docs: Path) -> str:
    """README.md as the site's home page: links into ``docs/`` become site links; a link to a listed page that is
    not there yet becomes its text (any other broken link stays, and fails the strict build)."""
    pending = pending_pages(docs)
    text = re.sub(r"\[([^\]]+)\]\(docs/([^)#]+)(#[^)]*)?\)",
                  lambda m: m.group(1) if m.group(2) in pending else m.group(0), text)
    return text.replace("](docs/", "](")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def cli_reference() -> str:
    """Every ``instantstyle`` command: its help, usage and options, as click itself renders them."""
    import click

    from instantstyle.app.cli import main

    root = click.Context(main, info_name="instantstyle")
    parts = [f"`instantstyle --help`: {main.help}", ""]
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=root)
        parts += [f"## {name}", "", command.help or "", "", "```", command.get_usage(ctx), "```", ""]
        rows = [record for param in command.get_params(ctx) if (record := param.get_help_record(ctx))]
        if rows:
            parts += ["| option | what it does |", "|---|---|"]
            parts += [f"| `{_cell(opts)}` | {_cell(help_text)} |" for opts, help_text in rows]
            parts.append("")
    return "\n".join(parts)


def benchmark(path: str, keys: list[str]) -> str:
    """Sections of a benchmark report JSON (``{"report": {key: markdown}}``), headings moved to the page's level 2."""
    report = json.loads((ROOT / path).read_text())["report"]
    missing = [key for key in keys if key not in report]
    if missing:
        raise ValueError(f"{path}: no report section {', '.join(missing)} (it has {', '.join(report)})")
    text = "\n\n".join(report[key] for key in keys or list(report))
    levels = [len(m.group(1)) for m in re.finditer(r"^(#+) ", text, flags=re.M)]
    shift = min(levels) - 2 if levels else 0
    return re.sub(r"^(#+) ", lambda m: "#" * max(len(m.group(1)) - shift, 2) + " ", text, flags=re.M)


def expand(markdown: str) -> str:
    """Replace every ``<!-- generated: ... -->`` marker with what it names."""

    def one(match: re.Match[str]) -> str:
        what, args = match.group("what"), match.group("args").split()
        if what == "readme":
            return readme_for_site((ROOT / "README.md").read_text(), ROOT / "docs")
        if what == "cli-reference":
            return cli_reference()
        if what == "benchmark":
            return benchmark(args[0], args[1:])
        raise ValueError(f"unknown generated block {what!r}")

    return MARKER.sub(one, markdown)


def on_config(config: Any, **kwargs: Any) -> Any:
    config["nav"] = navigation(Path(config["docs_dir"]))
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)
