"""`python -m edge ...` runs the edge CLI."""

from edge.cli import main

if __name__ == "__main__":
    main()
