"""What `pip install .` ships: every package of linearsr_jax/, and configs/ as
linearsr_jax.configs rather than a top-level package named `configs`."""

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
