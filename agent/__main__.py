"""`python -m agent` is `traintrail-agent`."""

from agent.cli import main

main()
