"""Shim for tools that want a setup.py, such as Dataflow's ``--setup_file ./setup.py``.

Everything about the package is declared in pyproject.toml.
"""

from setuptools import setup

setup()
