"""Only what pyproject.toml cannot say: derivations/*.md ship inside the package as
npllama.derivations (the folder stays where it is, for readers of the repository), so
`npllama explain OP` and `npllama exercise start OP` find the math in an installed wheel."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["npllama", "npllama.*"]) + ["npllama.derivations"],
    package_dir={"npllama.derivations": "derivations"},
    package_data={"npllama": ["py.typed"], "npllama.derivations": ["*.md"]},
)
