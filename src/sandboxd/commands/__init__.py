"""`sandboxd` command groups beyond the core ones in sandboxd/cli.py."""
