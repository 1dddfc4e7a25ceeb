"""The ``pasta`` command line: one module per subcommand group, each with ``add_parser``."""
