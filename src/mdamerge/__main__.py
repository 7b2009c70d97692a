"""``python -m mdamerge`` runs the command line."""

from .cli import main

main()
