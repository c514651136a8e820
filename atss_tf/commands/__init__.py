"""Subcommands of the ``atss-tf`` CLI: each module has ``add_arguments`` and ``run``."""
