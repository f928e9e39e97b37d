"""The package by its parts: layers import downward only, no import cycle, README's tree is true."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "speechbrain_quads"
README = PACKAGE.parent / "README.md"
ALLOWED = {  # subpackage -> the subpackages it may import (DESIGN: layers run downward)
    "models": {"models"},
    "evaluation": {"evaluation", "models"},
    "data": {"data"},
    "codebook": {"codebook", "models"},
    "training": {"training", "codebook", "models", "evaluation"},
    "deploy": {"deploy", "codebook", "training", "models", "evaluation", "data"},
}


def modules() -> dict[str, Path]:
    """``{"codebook.packing": path, ...}`` for every module of a subpackage."""
    return {f"{p.parent.name}.{p.stem}": p for p in PACKAGE.glob("*/*.py") if p.stem != "__init__"}


def imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_subpackages_import_downward_only():
    assert set(ALLOWED) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    for name, path in modules().items():
        own = name.split(".")[0]
        for target in imports(path):
            if target.startswith("speechbrain_quads."):
                layer = target.split(".")[1]
                assert layer in ALLOWED[own], f"{name} imports {target}"


def test_the_codebook_engine_imports_no_speechbrain():
    for name, path in modules().items():
        if name.startswith("codebook."):
            assert not {t for t in imports(path) if t.split(".")[0] == "speechbrain"}, name


def test_no_import_cycle():
    graph = {name: {t.removeprefix("speechbrain_quads.") for t in imports(path)
                    if t.removeprefix("speechbrain_quads.") in modules()}
             for name, path in modules().items()}
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"import cycle: {' -> '.join(stack + (name,))}"
        if name in done:
            return
        for target in graph[name]:
            visit(target, stack + (name,))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_readme_architecture_names_every_module():
    text = README.read_text(encoding="utf-8")
    tree = text[text.index("## Architecture"):]
    tree = tree[: tree.index("\n## ", 1)]
    missing = [name for name in modules() if f"{name.split('.')[1]}.py" not in tree]
    assert not missing
    assert all(f"{package}/" in tree for package in ALLOWED)
