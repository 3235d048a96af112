"""The machinery of ``file:///dir`` (``asyncipc/transports/file.py`` is its face).

- :mod:`.relay`: a broker's messages to and from the shared bus log under ``dir/bus/``;
- :mod:`.host`: which process hosts the directory's streams (a lock file), and the
  take-over when it leaves.

``docs/file.md`` describes the whole.
"""
