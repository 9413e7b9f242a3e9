"""``python -m router.cli``: the same as ``canary``."""

from router.cli.main import main

main()
