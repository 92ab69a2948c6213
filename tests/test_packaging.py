"""What `pip install .` ships: every package of linearsr_jax/, and configs/ as
linearsr_jax.configs rather than a top-level package named `configs`."""

import ast
import importlib
import tomllib

from repo_paths import CONFIGS, REPO


def test_every_package_is_listed_and_configs_installs_inside_linearsr_jax():
  setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
  on_disk = {
      ".".join(p.parent.relative_to(REPO).parts)
      for p in (REPO / "linearsr_jax").rglob("__init__.py")
  }
  assert (CONFIGS / "__init__.py").exists()
  assert set(setuptools["packages"]) == on_disk | {"linearsr_jax.configs"}
  assert setuptools["package-dir"] == {"linearsr_jax.configs": "configs"}
  assert not any(p.split(".")[0] == "configs" for p in setuptools["packages"])


def test_config_files_import_their_siblings_through_the_installed_package():
  for path in CONFIGS.glob("*.py"):
    text = path.read_text()
    assert "from configs" not in text and "import configs" not in text, path.name


def _names_imported_from_the_package(tree):
  """(line, module, name or None) for each absolute import of linearsr_jax in a parsed file,
  function-level imports included."""
  ours = lambda module: (module or "").split(".")[0] == "linearsr_jax"
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and ours(node.module):
      for alias in node.names:
        yield node.lineno, node.module, alias.name
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if ours(alias.name):
          yield node.lineno, alias.name, None


def test_every_import_of_the_package_anywhere_in_the_tree_resolves():
  # Scripts the tests start in subprocesses, benches and configs are no test modules: a module
  # that moved would otherwise surface as one failed subprocess, or not at all.
  unresolved = []
  for path in sorted(
      p for d in ("linearsr_jax", "tests", "bench", "configs") for p in (REPO / d).rglob("*.py")):
    for line, module, name in _names_imported_from_the_package(ast.parse(path.read_text())):
      where = f"{path.relative_to(REPO)}:{line}"
      try:
        imported = importlib.import_module(module)
      except ImportError as e:
        unresolved.append(f"{where}: {e}")
        continue
      if name is not None and not hasattr(imported, name):
        try:
          importlib.import_module(f"{module}.{name}")
        except ImportError:
          unresolved.append(f"{where}: {module} has no {name}")
  assert not unresolved, "\n".join(unresolved)
