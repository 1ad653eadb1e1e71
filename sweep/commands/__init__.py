"""Command-line subcommands of noisesweep, one module each."""
