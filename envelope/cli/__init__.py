"""The `envelope` command line (see `envelope.cli.main`)."""
