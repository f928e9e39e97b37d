"""Recipe files loaded as modules in tests: a recipe's ``prepare.py`` or ``train.py`` is a script,
not a package member, so tests import it from its path (its functions, without running it)."""

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_recipe_file(name: str, path: Path) -> ModuleType:
    """The Python file at ``path`` executed as a module called ``name`` (``__main__`` code does
    not run)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
