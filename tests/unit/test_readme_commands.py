"""Every command line in README's code blocks parses with the real argument parser, and the names it
uses (datasets, methods, profiles) are registered: a README example can no longer hold a name the CLI
refuses (the torchrun example once said ``--dataset coco``)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from benchmark.core.registry import DATASETS, METHODS, discover

discover()
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[list[str]]:
    """The ``run_benchmark.py`` invocations of README's ``bash`` code blocks (the usage synopsis is a
    plain block): continuation lines joined, comments and optional ``[...]`` brackets removed."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    out = []
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.strip()
            words = shlex.split(line.replace("[", "").replace("]", ""), comments=True)
            starts = [i for i, w in enumerate(words) if w.endswith("run_benchmark.py")]
            if not starts:
                continue
            start = starts[0] + 1
            out.append(words[start:])
    return out


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_parses(argv):
    from benchmark.cli.parser import SUBCOMMANDS, run_parser
    from benchmark.config.profiles import PROFILES

    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "run"
    args = argv[1:] if command != "run" else argv
    if command in ("run", "status"):
        parser = run_parser()
        if command == "status":
            parser.add_argument("--stale-minutes", type=float)
        parsed = parser.parse_args(args)
        for name in parsed.dataset:
            assert name in DATASETS.module_dict, f"README uses --dataset {name}, which is not registered"
        for name in parsed.methods or []:
            assert name == "all" or name in METHODS.module_dict or parsed.plugins, f"unknown method {name}"
        assert parsed.profile in PROFILES
    elif command == "recipes":
        from benchmark.cli.subcommands import cmd_recipes

        assert cmd_recipes(args) == 0
    elif command == "masks":
        from benchmark.cli.subcommands import masks_parser

        masks_parser().parse_args(args)
    else:
        flags = [a for a in args if a.startswith("--")]
        known = {"report": {"--out", "--reported", "--plugins", "--recompute", "--data-root"},
                 "samples": {"--out", "--size", "-n"},
                 "prepare": {"--dataset", "--data-root", "--preset"}}[command]
        assert set(flags) <= known, f"README's {command} command uses unknown flags {set(flags) - known}"
