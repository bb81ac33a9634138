"""``python -m trubrics_ingestion`` runs the CLI."""

from .cli import main

main()
