"""The ``passwd`` command: print a password hash for a configuration file's ``[[users]]``."""

from __future__ import annotations

import argparse
import getpass
import sys

from ..users import hash_password
from ._common import EXIT_OK, CommandError


async def _passwd(args: argparse.Namespace) -> int:
    """Read a password (asked twice on a terminal; else the first line of stdin) and
    print its salted scrypt hash, what ``password_hash`` takes (docs/security.md)."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CommandError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    print(hash_password(password), flush=True)
    return EXIT_OK
