"""The command-line front-ends, one module per `linearsr` sub-command (cli.py dispatches), the
demo, and what they share: the config flags (config_flags.py). Nothing below imports them."""
