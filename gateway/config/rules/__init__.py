"""The rules of each config section, one module per section.

Each takes a ``gateway.config.source.Source`` and the section's nodes and
returns the section's frozen dataclass (``gateway.config.schema``), adding
every problem to the source's error list; ``gateway.config.load`` runs them.
"""
