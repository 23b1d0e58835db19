"""The README and the reference pages in docs/ against the code: every command-line flag documented, every
dotted `lottery.x.y` name importable, every public name listed, the README short, its links alive and free of
internal issue numbers. Fast: it reads files and imports modules; nothing trains."""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lottery
from lottery.cli import _parser

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
REFERENCE = ["index.md", "install.md", "concepts.md", "cli.md", "python-api.md", "results.md", "presets.md",
             "reproducibility.md", "findings.md"]
MAX_README_LINES = 160

# `lottery.deploy.compact.compact`, `lottery.IMP(`: a dotted name starting at `lottery` (not inside a path or URL)
DOTTED = re.compile(r"(?<![\w./-])lottery(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from\s+(lottery(?:\.\w+)*)\s+import\s+([\w, ]+)", re.MULTILINE)
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\s*\d+|#\d+\b", re.IGNORECASE)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"}


def _mentions(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def _sections(text: str) -> dict[str, str]:
    """`## lottery NAME` -> that section's text, up to the next `## ` heading."""
    out: dict[str, str] = {}
    for match in re.finditer(r"^## lottery ([\w-]+)[^\n]*\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL):
        out[match.group(1)] = match.group(2)
    return out


def test_every_subcommand_flag_is_documented_in_its_section_of_cli_md() -> None:
    text = _read(DOCS / "cli.md")
    sections = _sections(text)
    commands = _subcommands(_parser())
    assert len(commands) >= 11
    missing = []
    for name, sub in commands.items():
        if name not in sections:
            missing.append(f"no section '## lottery {name}'")
            continue
        missing += [f"lottery {name} {flag}" for flag in sorted(_flags(sub)) if not _mentions(sections[name], flag)]
    assert not missing, "docs/cli.md does not document: " + "; ".join(missing)


def test_top_level_flags_are_documented_in_cli_md() -> None:
    text = _read(DOCS / "cli.md")
    missing = [flag for flag in sorted(_flags(_parser())) if not _mentions(text, flag)]
    assert not missing, f"docs/cli.md does not document the top-level flags {missing}"


def test_flag_check_would_catch_an_undocumented_flag() -> None:
    """The check above can fail: a flag absent from a section is not found in it."""
    sections = _sections(_read(DOCS / "cli.md"))
    assert _mentions(sections["find"], "--levels")
    assert not _mentions(sections["find"], "--no-such-flag")
    assert not _mentions(sections["report"], "--levels")  # another command's flag does not count
    assert not _mentions("--test-curves-extra", "--test-curves")


def _resolve(name: str) -> str | None:
    """None when `name` resolves: the longest importable module prefix, then attributes. Else why not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            return f"importing {module_name} failed: {exc}"
        rest = parts[i:]
        for k, attr in enumerate(rest):
            if attr in vars(obj):
                obj = vars(obj)[attr]
                continue
            # A name the module declares lazily (in `__all__`, served by a module __getattr__) counts without
            # loading its optional library (lightning, transformers, matplotlib) when nothing follows it.
            if k == len(rest) - 1 and attr in getattr(obj, "__all__", ()):
                return None
            if not hasattr(obj, attr):
                return f"{module_name} has no {'.'.join(rest)}"
            obj = getattr(obj, attr)
        return None
    return "no importable prefix"


def _documents() -> dict[str, str]:
    return {"README.md": _read(README), **{f"docs/{p}": _read(DOCS / p) for p in REFERENCE}}


def test_every_dotted_lottery_name_in_the_readme_and_reference_pages_resolves() -> None:
    bad = []
    seen = 0
    for where, text in _documents().items():
        for name in sorted(set(DOTTED.findall(text))):
            seen += 1
            why = _resolve(name)
            if why:
                bad.append(f"{where}: {name} ({why})")
        for module, names in FROM_IMPORT.findall(text):
            for attr in (n.strip() for n in names.split(",") if n.strip()):
                seen += 1
                why = _resolve(f"{module}.{attr}")
                if why:
                    bad.append(f"{where}: from {module} import {attr} ({why})")
    assert seen > 20, "the pages name almost nothing of the package: is the pattern broken?"
    assert not bad, "names that do not resolve (moved or removed?): " + "; ".join(bad)


def test_name_check_catches_moved_modules() -> None:
    """The modules the old README named before they moved are caught, the new places resolve."""
    for stale in ("lottery.compact", "lottery.inference", "lottery.interpolation", "lottery.compact.compact",
                  "lottery.no_such_function"):
        assert _resolve(stale) is not None, stale
    for current in ("lottery.deploy.compact.compact", "lottery.deploy.inference",
                    "lottery.experiments.interpolation.interpolate", "lottery.find_tickets", "lottery.noise_run",
                    "lottery.adapters.LotteryCallback"):
        assert _resolve(current) is None, current
    assert DOTTED.findall("see lottery.IMP. and docs/lottery.md") == ["lottery.IMP"]


def test_every_public_name_is_listed_in_python_api_md() -> None:
    text = _read(DOCS / "python-api.md")
    missing = [name for name in lottery.__all__ if not re.search(rf"`{re.escape(name)}[`(]", text)]
    assert not missing, f"docs/python-api.md does not list {missing}"


def test_readme_is_short_and_cites_no_issue_numbers() -> None:
    text = _read(README)
    lines = text.splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    assert not ISSUE_NUMBER.search(text), f"README.md cites {ISSUE_NUMBER.search(text).group(0)!r}"


def test_no_page_cites_an_internal_issue_number() -> None:
    found = [f"{page.name}: {m.group(0)!r}" for page in sorted(DOCS.glob("*.md"))
             for m in ISSUE_NUMBER.finditer(_read(page))]
    assert not found, "internal issue numbers in user-facing pages: " + "; ".join(found)
    assert ISSUE_NUMBER.search("as in issue 12") and ISSUE_NUMBER.search("(issue 28)")
    assert not ISSUE_NUMBER.search("a known issue with 2 threads")


def _relative_links(text: str) -> list[str]:
    # Links inside code are not links: drop fenced blocks and inline code first.
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) and not target.startswith("#")]


def test_every_relative_link_in_the_readme_points_to_a_file() -> None:
    links = _relative_links(_read(README))
    assert any(link.startswith("docs/") for link in links)
    broken = [link for link in links if not (REPO / link.split("#")[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
    assert _relative_links("[a](docs/nope.md) [b](https://x.org) [c](#top) `[d](e.md)`") == ["docs/nope.md"]


def test_every_page_of_docs_is_in_the_site_navigation() -> None:
    config = _read(REPO / "mkdocs.yml")
    assert re.search(r"^docs_dir:\s*docs\s*$", config, re.MULTILINE)
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if not re.search(rf":\s*{re.escape(page.name)}\s*$|-\s*{re.escape(page.name)}\s*$", config, re.MULTILINE)]
    assert not missing, f"mkdocs.yml's nav leaves out {missing}"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs build --strict: a broken link or anchor anywhere in docs/ fails (second tier: a few seconds)."""
    from conftest import require

    require("mkdocs")
    require("material")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists()
