"""`python -m collector` is `traintrail`."""

from collector.cli import main

main()
