"""`python -m edge ...` runs the edge CLI."""

from edge.cli import main

main()
