# Sphinx configuration of rnncore's API reference, built from the docstrings:
#   python -m sphinx -W --keep-going -b html docs docs/_build/html
# (README, API reference). The package must be importable (installed, or built in place).
import rnncore

project = "rnncore"
author = "the rnncore developers"
copyright = "2026, the rnncore developers"
release = version = rnncore.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
# The docstrings give each argument's type in words (NumPy style); signatures stay short.
autodoc_typehints = "none"
autodoc_default_options = {"members": True}
nitpicky = False
html_theme = "alabaster"
html_title = f"rnncore {release}"
exclude_patterns = ["_build"]
