"""Subcommands of the ``runmeter`` script, one module each (discovered by :mod:`collector.cli`)."""
