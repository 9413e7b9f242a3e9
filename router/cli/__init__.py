"""``canary``, the command line: one module per group of commands.

``main`` (``main.py``) builds the parser and runs ``serve``; ``registry.py`` the model
registry's commands, ``experiment.py`` the experiments', ``simulate.py`` the end-to-end
simulation; ``canary ui`` comes from the UI package.
"""

from router.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
