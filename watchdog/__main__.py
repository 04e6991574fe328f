"""`python -m vramwatch` runs the same CLI as the `vramwatch` command."""

from .entry import main

main()
