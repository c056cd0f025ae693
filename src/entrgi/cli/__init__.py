"""The ``entrgi`` command line (``entrgi <verb> --help``); flags come from the config dataclasses."""

from .commands import main

__all__ = ["main"]
