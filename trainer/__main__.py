"""`python -m trainer ...` runs the trainer CLI."""

from trainer.cli import main

if __name__ == "__main__":
    main()
