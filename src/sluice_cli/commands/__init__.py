"""The `sluice` subcommands; each module holds one command and the pure helpers it needs."""
