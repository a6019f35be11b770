"""One mechanism, once: the port interface is declared in one place, the transport imports
nothing above it, and backoff jitter is drawn only in the backoff module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "terminal_gw"
#: Layers above the transport: it may import none of them.
ABOVE_TRANSPORT = ("modem", "gnss", "uplink", "commands", "daemon", "sim", "cli", "demo")


def modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_transport_imports_nothing_above_it() -> None:
    for path, tree in modules():
        if path.parent.name != "transport":
            continue
        for name in imported(tree):
            for layer in ABOVE_TRANSPORT:
                assert not name.startswith(f"terminal_gw.{layer}"), f"{path.name} imports {name}"


def test_one_port_protocol() -> None:
    """Exactly one Protocol declares read, write and close: transport/port.py's Port."""
    found = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            if not any(isinstance(b, ast.Name) and b.id == "Protocol" for b in node.bases):
                continue
            methods = {n.name for n in node.body if isinstance(n, ast.AsyncFunctionDef)}
            if {"read", "write", "close"} <= methods:
                found.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert found == ["transport/port.py:Port"]


def test_jitter_is_drawn_only_in_the_backoff_module() -> None:
    """No retry loop draws its own jitter (random.uniform/random.random): they use backoff."""
    for path, tree in modules():
        if path.name == "backoff.py" or path.parent.name == "sim":
            continue  # the simulators' noise is not a backoff
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
                and node.attr in ("uniform", "random")
            ):
                raise AssertionError(f"{path.relative_to(PACKAGE)}:{node.lineno} draws jitter")


def test_one_record_sink_protocol() -> None:
    """Exactly one Protocol declares the record sink's `put`: models.py's RecordSink."""
    found = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            if not any(isinstance(b, ast.Name) and b.id == "Protocol" for b in node.bases):
                continue
            for n in node.body:
                if isinstance(n, ast.AsyncFunctionDef) and n.name == "put":
                    names = [a.arg for a in n.args.args]
                    if names[1:3] == ["topic", "payload"]:
                        found.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert found == ["models.py:RecordSink"]


def test_device_topics_are_built_only_in_the_topics_module() -> None:
    """No f-string outside topics.py joins a prefix, "/" and a device: `Topics` does."""
    for path, tree in modules():
        if path.name == "topics.py":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.JoinedStr):
                continue
            parts = node.values
            for a, slash, b in zip(parts, parts[1:], parts[2:], strict=False):
                if (
                    isinstance(a, ast.FormattedValue)
                    and "prefix" in ast.unparse(a.value)
                    and isinstance(slash, ast.Constant)
                    and slash.value == "/"
                    and isinstance(b, ast.FormattedValue)
                ):
                    where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
                    raise AssertionError(f"{where} builds a topic")
