"""What `pip install` puts on the path: the user code and one trainer
package, which carries the bundled datasets and their files."""

import fnmatch
import os

import pytest
import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 skips


def _setuptools_table():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _installed_packages():
    include = _setuptools_table()["packages"]["find"]["include"]
    return setuptools.find_packages(REPO, include=include)


def test_installed_top_level_names_are_the_user_code_and_the_trainer():
    packages = _installed_packages()
    assert {name.split(".")[0] for name in packages} == {
        "mylayers",
        "models",
        "configs",
        "template_trainer",
    }
    assert "template_trainer.data.digits" in packages
    assert "template_trainer.data.python_docs" in packages


@pytest.mark.parametrize(
    "package, data_file",
    [
        ("template_trainer.data.digits", "digits.csv.gz"),
        ("template_trainer.data.python_docs", "python_docs.txt.gz"),
        ("template_trainer.data.python_docs", "LICENSE"),
    ],
)
def test_bundled_data_files_are_installed(package, data_file):
    """A wheel carries a non-Python file only if `package-data` names it;
    the source tree has it either way, so only this check sees it go."""
    folder = os.path.join(REPO, *package.split("."))
    assert os.path.isfile(os.path.join(folder, data_file))
    patterns = _setuptools_table()["package-data"].get(package, [])
    assert any(fnmatch.fnmatch(data_file, p) for p in patterns), patterns
