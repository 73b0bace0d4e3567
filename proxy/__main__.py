"""``python -m proxy`` is the ``maitred`` command."""

from proxy.cli import main

main(prog_name="maitred")
