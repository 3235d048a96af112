"""Stream storage engines: the :class:`Log` contract and the file store, :class:`FileLog`.

``base`` is the contract the stream engine codes against; ``filelog`` keeps a log in
append-only segment files (``record`` is their format, ``fileio`` the file operations it
makes, with a power-cut simulator for the tests); ``memory`` keeps one in memory.
"""

from .base import FsyncPolicy, IndexEntry, Log, LostSegment, RecoveryReport, StoredMessage
from .filelog import FileLog

__all__ = [
    "FileLog",
    "FsyncPolicy",
    "IndexEntry",
    "Log",
    "LostSegment",
    "RecoveryReport",
    "StoredMessage",
]
