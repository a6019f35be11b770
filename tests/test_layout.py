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


def _uplink_graph() -> dict[str, set[str]]:
    """uplink/'s modules and the uplink modules each imports (`from terminal_gw.uplink import
    links` names the module `links`; any other name there is the package's `__init__`)."""
    uplink = PACKAGE / "uplink"
    graph: dict[str, set[str]] = {}
    for path in sorted(uplink.glob("*.py")):
        deps: set[str] = set()
        for name in imported(ast.parse(path.read_text(encoding="utf-8"))):
            if name.startswith("terminal_gw.uplink."):
                deps.add(name.split(".")[2])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "terminal_gw.uplink":
                for alias in node.names:
                    own = (uplink / f"{alias.name}.py").exists()
                    deps.add(alias.name if own else "__init__")
        graph[path.stem] = deps
    return graph


def test_the_uplink_is_the_link_over_the_drain_without_a_cycle() -> None:
    """The drain knows nothing of the link, only the facade (`__init__`) imports the link, and
    no uplink module imports the facade: the uplink's imports have no cycle."""
    graph = _uplink_graph()
    assert {"drain", "link", "mqtt"} <= graph.keys()
    assert "link" not in graph["drain"]
    assert [m for m, deps in graph.items() if "link" in deps] == ["__init__"]
    assert [m for m, deps in graph.items() if "__init__" in deps] == []
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in graph.get(module, set()):
            visit(dep, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
