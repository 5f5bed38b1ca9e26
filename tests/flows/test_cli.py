"""The `volgraph` command explains itself: `volgraph --help` lists every subcommand with a
one-line description, and each subcommand's `--help` names it `volgraph <command>`, has a
description and gives help text for every argument and option.

Each help is printed by a real `python -m flows.cli ... --help` in its own process (the way a
user runs it); the text is parsed as argparse lays it out. Never starts a server or a flow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("run", "replay", "record", "bench", "sim", "sim-okx", "gateway", "watch", "check-config", "doctor", "grafana", "query")
SECTIONS = ("positional arguments:", "options:", "optional arguments:")


def volgraph_help(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, f"volgraph {' '.join(args)} --help exited {done.returncode}: {done.stderr}"
    return done.stdout


def help_entries(text: str) -> dict[str, dict[str, str]]:
    """{section title: {invocation: help text}} from argparse's layout: an entry starts at an
    indent of 2; its help follows on the same line after two or more spaces, or on the next
    lines, indented deeper. Wrapped help lines join the entry above them."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    last = None
    for line in text.splitlines():
        if not line.strip():
            last = None
            continue
        if not line.startswith(" "):
            current = line.strip() if line.strip() in SECTIONS or line.strip().endswith(":") else None
            if current is not None:
                sections[current] = {}
            last = None
            continue
        if current is None:
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 2:
            invocation, *help_text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            last = invocation
            sections[current][invocation] = help_text[0] if help_text else ""
        elif last is not None:
            sections[current][last] = (sections[current][last] + " " + line.strip()).strip()
    return sections


def usage_prog(text: str) -> str:
    match = re.match(r"usage: (\S+(?: [a-z][a-z-]*)?)", text)
    assert match, f"no usage line in:\n{text}"
    return match.group(1)


def description(text: str) -> str:
    """The paragraph between the usage block and the first section."""
    blocks = [b.strip() for b in text.split("\n\n")]
    return next((b for b in blocks[1:] if b and not b.splitlines()[0].strip().endswith(":")), "")


def test_top_level_help_lists_every_subcommand_with_a_description():
    text = volgraph_help()
    assert usage_prog(text) == "volgraph"
    assert description(text), text
    listed: dict[str, str] = {}
    for section in help_entries(text).values():
        for invocation, help_text in section.items():
            listed[invocation] = help_text
    # subcommands sit at indent 4 under the COMMAND entry: parse those lines directly
    rows = re.findall(r"^ {4}(\S+)(?:\s{2,}(.*))?$", text, flags=re.M)
    commands = {name: (help_text or "").strip() for name, help_text in rows}
    # a long name (check-config) puts its help on the next line
    for name in commands:
        if not commands[name]:
            after = text.split(f"\n    {name}\n", 1)[1]
            commands[name] = after.splitlines()[0].strip()
    assert set(commands) == set(SUBCOMMANDS), commands
    for name, help_text in commands.items():
        assert len(help_text) > 10, f"volgraph --help: {name} has no description"
    assert listed.get("-h, --help"), listed


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommand_help_names_itself_and_explains_every_option(command):
    text = volgraph_help(command)
    assert usage_prog(text) == f"volgraph {command}", text.splitlines()[0]
    assert description(text), f"volgraph {command} --help has no description:\n{text}"
    sections = help_entries(text)
    options = sections.get("options:") or sections.get("optional arguments:")
    assert options, f"no options section in volgraph {command} --help:\n{text}"
    entries = {**sections.get("positional arguments:", {}), **options}
    missing = [invocation for invocation, help_text in entries.items() if not help_text]
    assert not missing, f"volgraph {command} --help: no help text for {missing}"


def test_check_config_takes_the_file_as_positional_or_as_config(tmp_path):
    good = tmp_path / "graph.toml"
    good.write_text("[chain]\nfit_interval_ms = 1000\n")
    for args in ([str(good)], ["--config", str(good)]):
        done = subprocess.run([sys.executable, "-m", "flows.cli", "check-config", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{good}: ok"), done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[chain]\nfit_intervl_ms = 1000\n")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "check-config", "--config", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "fit_intervl_ms" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "flows.cli", "check-config", str(good), "--config", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "give one" in done.stderr, done.stderr
