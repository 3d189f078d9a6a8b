"""The `rodin` command line."""
