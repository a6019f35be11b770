"""The sub-command table: every listed module exists and is a sub-command, each one's help
builds, a module that is missing is an error (never a command silently gone), the exit codes
have one definition, and `terminal-gw --help` loads no domain code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from terminal_gw import cli, exit_codes

PACKAGE = Path(cli.__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGW_")}
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("name", "module"), [(n, m) for n, _, m in cli.COMMANDS])
def test_every_listed_module_is_a_sub_command(name: str, module: str) -> None:
    loaded = cli.load_command(module)
    assert callable(loaded.add_arguments)
    assert callable(loaded.cli)
    # Its arguments build: the parser for a command line naming it parses `NAME --help`.
    with pytest.raises(SystemExit) as exc:
        cli.build_parser([name]).parse_args([name, "--help"])
    assert exc.value.code == 0


def test_a_missing_module_is_an_error_not_a_dropped_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = (*cli.COMMANDS, ("ghost", "a command whose module is gone", "terminal_gw.cli.ghost"))
    monkeypatch.setattr(cli, "COMMANDS", table)
    # Listed in the help like every other, and naming it fails loudly.
    assert "ghost" in cli.build_parser([]).format_help()
    with pytest.raises(ModuleNotFoundError, match=r"terminal_gw\.cli\.ghost"):
        cli.build_parser(["ghost"])
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser(None)


def test_a_module_without_an_entry_point_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMANDS", (("errors", "not a command", "terminal_gw.errors"),))
    with pytest.raises(TypeError, match="add_arguments"):
        cli.build_parser(["errors"])


def test_help_lists_every_command_and_loads_no_domain_code() -> None:
    probe = (
        "import sys\n"
        "from terminal_gw.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('pydantic', 'structlog', 'paho', 'aiomqtt', 'serial', 'asyncio',\n"
        "         'terminal_gw.config', 'terminal_gw.models', 'terminal_gw.daemon')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    for args in (["--help"], ["status", "--help"], ["--log-level", "debug", "run", "--help"]):
        res = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.rstrip().endswith("[]"), (args, res.stdout[-300:])
    res = run_cli("--help")
    for name, help_text, _ in cli.COMMANDS:
        assert name in res.stdout
        assert help_text.split()[0] in res.stdout


def test_global_options_before_the_command() -> None:
    res = run_cli("--log-level", "error", "schema", "fix")
    assert res.returncode == exit_codes.EXIT_OK, res.stderr
    assert '"TPV"' in res.stdout


def test_unknown_command_is_a_usage_error() -> None:
    res = run_cli("frobnicate")
    assert res.returncode == exit_codes.EXIT_USAGE
    assert "invalid choice" in res.stderr
    assert "Traceback" not in res.stderr


def test_exit_codes_are_defined_once() -> None:
    """No module but exit_codes.py assigns an EXIT_ name, nor returns a bare status number
    from a sub-command's handler."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "exit_codes.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.startswith("EXIT_"):
                        assert isinstance(node.value, ast.Name), (
                            f"{path}:{node.lineno}: {target.id} defined outside exit_codes.py"
                        )
            if isinstance(node, ast.FunctionDef) and node.name in ("cli", "main"):
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Constant):
                        assert not isinstance(ret.value.value, int), (
                            f"{path}:{ret.lineno}: {node.name}() returns a bare number"
                        )


def test_nothing_imports_main_back() -> None:
    """The command line is entered once; no module imports `terminal_gw.__main__`."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "terminal_gw.__main__", f"{path}:{node.lineno}"
            if isinstance(node, ast.Constant) and node.value == "terminal_gw.__main__":
                raise AssertionError(f"{path}:{node.lineno} names terminal_gw.__main__")
