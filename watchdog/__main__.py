"""`python -m vramwatch` runs the same CLI as the `vramwatch` command."""

from .cli import main

main()
