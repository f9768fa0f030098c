"""The package's shape (issue 12): no import cycles, no CLI imports from the library,
no model-family switches outside the registry, `validate` without TensorFlow."""

import ast
import os
import pathlib
import re
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "kerastx"
ROOT = PACKAGE.parent


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_lines(tree) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks (annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """module -> the kerastx modules it imports, anywhere in the file (functions too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                # `from a import b`: the module a.b when it is one, else a.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle_function_level_imports_included():
    graph = import_graph()
    assert graph["kerastx.workflow"] >= {"kerastx.train.loop", "kerastx.runs"}  # it reads
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_library_never_imports_the_cli():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "kerastx.cli" in deps)
    assert users == ["kerastx.__main__"]


def test_tensorflow_side_modules_receive_the_task_and_never_import_the_registry():
    graph = import_graph()
    receivers = [
        m
        for m in graph
        if (m + ".").split(".")[1]
        in ("inference", "export", "evaluate", "predict", "layers", "models")
        or m.startswith(("kerastx.decoding", "kerastx.train.step", "kerastx.losses"))
    ]
    assert receivers
    assert [m for m in receivers if "kerastx.tasks" in graph[m]] == []


def test_model_family_names_appear_only_in_the_registry_and_config_values():
    pattern = re.compile(r'"(seq2seq|decoder_lm|encoder_classifier)"')
    found = {
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if pattern.search(path.read_text())
    }
    # The registry, the config default of model.type, and the bench's experiment cases.
    assert found <= {
        "kerastx/tasks/__init__.py",
        "kerastx/config/sections.py",
        "kerastx/bench_memory.py",
    }
    assert not re.search(
        r"(==|!=|\bin)\s*\(?\s*\"(seq2seq|decoder_lm|encoder_classifier)\"",
        (PACKAGE / "bench_memory.py").read_text(),
    )


def test_validate_and_schema_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "from kerastx.cli import main\n"
        "assert main(['validate', 'experiments/quickstart.yaml']) == 0\n"
        "assert main(['schema', '-o', sys.argv[1]]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.devnull],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
