"""SFTP version 3 (draft-ietf-secsh-filexfer-02 + OpenSSH PROTOCOL §4-5), sans-IO.

Theory of operation
-------------------
An SFTP session is a byte stream (the ``sftp`` subsystem of a session channel) of
*packets*: ``uint32 length || byte type || fields`` (draft §3). The client sends
requests, each carrying a ``uint32 id``; the server answers each with one
response carrying the same id, in any order (§6.1). This module has three layers
and no I/O:

1. **Codecs.** One frozen dataclass per message. Most are a flat list of fields,
   so each class lists them in ``_FIELDS`` and one generic reader and writer do
   the work; INIT, VERSION and NAME have bodies of their own. :func:`encode` turns
   any message into a payload; :func:`decode_request` and :func:`decode_response`
   turn payloads back. Decoders raise only :class:`~trioport.errors.DecodeError`.
   An unknown packet type decodes to :class:`UnknownRequest` and an unknown
   extension to :class:`ExtendedRequest`, so a server can answer
   ``SSH_FX_OP_UNSUPPORTED`` and carry on. Extension replies
   (:class:`StatvfsReply`, :class:`LimitsReply`, :class:`UsersGroupsReply`) are the
   bodies of an :class:`ExtendedReply`, parsed by the client that knows what it
   asked for.
2. **Framing.** :class:`Framer` buffers bytes and yields payloads. A packet over
   :data:`MAX_MESSAGE` (256 KiB, OpenSSH's ``SFTP_MAX_MSG_LENGTH``) or of length
   zero is a :class:`DecodeError`: sftp-server ends the session on it, and so do we.
3. **State.** :class:`ServerSession` enforces the order of a session: nothing but
   INIT is processed before INIT (sftp-server: "request before init" is fatal), a
   second INIT is refused, and no response goes out before VERSION.
   :class:`ClientSession` is the mirror image for a client.

Filenames are ``bytes``: version 3 does not define an encoding (draft §6.2) and
POSIX filenames need not be UTF-8. Paths, handles and data pass through untouched.

Like sftp-server, request decoders ignore bytes after the last field they know
(OpenSSH consumes and drops them), so a client that appends fields still works.

OpenSSH deviations we follow (PROTOCOL §4): SSH_FXP_SYMLINK carries the link
*target* first and the new link's *path* second (the reverse of the draft), so
:class:`Symlink` names its fields ``target`` and ``link``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import ClassVar

from ..errors import DecodeError, LocalProtocolError, RemoteProtocolError
from .wire import Reader, byte, string, uint32, uint64

__all__ = [
    "EXTENDED_REQUESTS",
    "MAX_HANDLE",
    "MAX_MESSAGE",
    "MAX_READ",
    "MAX_WRITE",
    "SERVER_EXTENSIONS",
    "SFTP_VERSION",
    "AttrFlags",
    "Attrs",
    "ClientSession",
    "Close",
    "CopyData",
    "Data",
    "ExpandPath",
    "ExtendedReply",
    "ExtendedRequest",
    "Framer",
    "Fsetstat",
    "Fstat",
    "Fstatvfs",
    "Fsync",
    "Handle",
    "Hardlink",
    "HomeDirectory",
    "Init",
    "Limits",
    "LimitsReply",
    "Lsetstat",
    "Lstat",
    "Mkdir",
    "Name",
    "NameEntry",
    "Open",
    "OpenFlags",
    "Opendir",
    "PacketType",
    "PosixRename",
    "Read",
    "Readdir",
    "Readlink",
    "Realpath",
    "Remove",
    "Rename",
    "Request",
    "Response",
    "Rmdir",
    "ServerSession",
    "SessionState",
    "Setstat",
    "Stat",
    "StatReply",
    "Status",
    "StatusCode",
    "Statvfs",
    "StatvfsReply",
    "Symlink",
    "UnknownRequest",
    "UsersGroupsById",
    "UsersGroupsReply",
    "Version",
    "Write",
    "decode_request",
    "decode_response",
    "encode",
    "frame",
]

#: The protocol version we speak (draft-ietf-secsh-filexfer-02 is version 3).
SFTP_VERSION = 3
#: Largest packet either side accepts: OpenSSH's ``SFTP_MAX_MSG_LENGTH``. A longer
#: one ends the session (sftp-server.c, sftp-client.c).
MAX_MESSAGE = 256 * 1024
#: Longest READ we serve and WRITE we accept: OpenSSH clamps reads to
#: ``SFTP_MAX_MSG_LENGTH - 1024`` so a DATA reply always fits in one packet.
MAX_READ = MAX_MESSAGE - 1024
MAX_WRITE = MAX_MESSAGE - 1024
#: Draft §6.2: "The handle strings MUST NOT be longer than 256 bytes."
MAX_HANDLE = 256


class PacketType(enum.IntEnum):
    """SSH_FXP_* packet types (draft §3)."""

    INIT = 1
    VERSION = 2
    OPEN = 3
    CLOSE = 4
    READ = 5
    WRITE = 6
    LSTAT = 7
    FSTAT = 8
    SETSTAT = 9
    FSETSTAT = 10
    OPENDIR = 11
    READDIR = 12
    REMOVE = 13
    MKDIR = 14
    RMDIR = 15
    REALPATH = 16
    STAT = 17
    RENAME = 18
    READLINK = 19
    SYMLINK = 20
    STATUS = 101
    HANDLE = 102
    DATA = 103
    NAME = 104
    ATTRS = 105
    EXTENDED = 200
    EXTENDED_REPLY = 201


class StatusCode(enum.IntEnum):
    """SSH_FX_* status codes (draft §7)."""

    OK = 0  #: success
    EOF = 1  #: read past the end of a file, or no more directory entries
    NO_SUCH_FILE = 2  #: a path or handle that does not exist
    PERMISSION_DENIED = 3  #: the user may not do this
    FAILURE = 4  #: any other error
    BAD_MESSAGE = 5  #: a badly formed request (or argument)
    NO_CONNECTION = 6  #: client-side only: no connection to the server
    CONNECTION_LOST = 7  #: client-side only: the connection went away
    OP_UNSUPPORTED = 8  #: the server does not implement this request


class OpenFlags(enum.IntFlag):
    """SSH_FXF_* flags of SSH_FXP_OPEN (draft §6.3)."""

    READ = 0x01
    WRITE = 0x02
    APPEND = 0x04
    CREAT = 0x08
    TRUNC = 0x10
    EXCL = 0x20


class AttrFlags(enum.IntFlag):
    """SSH_FILEXFER_ATTR_* flags: which fields an ATTRS block carries (draft §5)."""

    SIZE = 0x00000001
    UIDGID = 0x00000002
    PERMISSIONS = 0x00000004
    ACMODTIME = 0x00000008
    EXTENDED = 0x80000000


# --- attributes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attrs:
    """File attributes (draft §5). ``None`` means "not present".

    ``uid``/``gid`` travel together, and so do ``atime``/``mtime``; set both or
    neither. ``permissions`` is the whole ``st_mode`` (file type bits included),
    as sftp-server sends it.
    """

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None
    extended: tuple[tuple[bytes, bytes], ...] = ()

    def encode(self) -> bytes:
        """The ATTRS block.

        Raises:
            LocalProtocolError: only one of uid/gid or of atime/mtime is set.
        """
        if (self.uid is None) != (self.gid is None):
            raise LocalProtocolError("uid and gid must be set together")
        if (self.atime is None) != (self.mtime is None):
            raise LocalProtocolError("atime and mtime must be set together")
        flags = 0
        body = b""
        if self.size is not None:
            flags |= AttrFlags.SIZE
            body += uint64(self.size)
        if self.uid is not None and self.gid is not None:
            flags |= AttrFlags.UIDGID
            body += uint32(self.uid) + uint32(self.gid)
        if self.permissions is not None:
            flags |= AttrFlags.PERMISSIONS
            body += uint32(self.permissions)
        if self.atime is not None and self.mtime is not None:
            flags |= AttrFlags.ACMODTIME
            body += uint32(self.atime) + uint32(self.mtime)
        if self.extended:
            flags |= AttrFlags.EXTENDED
            body += uint32(len(self.extended))
            body += b"".join(string(k) + string(v) for k, v in self.extended)
        return uint32(flags) + body

    @classmethod
    def decode(cls, r: Reader) -> Attrs:
        """Read an ATTRS block. Unknown flag bits are ignored, as sftp-server does.

        Raises:
            DecodeError: the block is truncated.
        """
        flags = r.uint32()
        size = r.uint64() if flags & AttrFlags.SIZE else None
        uid = gid = atime = mtime = None
        if flags & AttrFlags.UIDGID:
            uid, gid = r.uint32(), r.uint32()
        permissions = r.uint32() if flags & AttrFlags.PERMISSIONS else None
        if flags & AttrFlags.ACMODTIME:
            atime, mtime = r.uint32(), r.uint32()
        extended: tuple[tuple[bytes, bytes], ...] = ()
        if flags & AttrFlags.EXTENDED:
            count = r.uint32()
            if count > r.remaining // 8:  # each pair is at least two empty strings
                raise DecodeError(f"ATTRS claims {count} extended pairs")
            extended = tuple((r.string(), r.string()) for _ in range(count))
        return cls(size, uid, gid, permissions, atime, mtime, extended)


# --- messages ----------------------------------------------------------------------------

# Field kinds of the generic codec: how each dataclass field travels.
_U32, _U64, _STR, _ATTRS = "u32", "u64", "str", "attrs"


class _Message:
    """Base of the flat messages: ``_FIELDS`` names each field's wire kind, in order."""

    __slots__ = ()
    TYPE: ClassVar[PacketType]
    _FIELDS: ClassVar[tuple[str, ...]] = ()

    def _body(self) -> bytes:
        out = []
        for f, kind in zip(fields(self), self._FIELDS):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if kind == _U32:
                out.append(uint32(value))
            elif kind == _U64:
                out.append(uint64(value))
            elif kind == _STR:
                out.append(string(value))
            else:
                out.append(value.encode())
        return b"".join(out)

    @classmethod
    def _read(cls, r: Reader, *prefix: object) -> _Message:
        values: list[object] = list(prefix)
        for kind in cls._FIELDS[len(prefix) :]:
            if kind == _U32:
                values.append(r.uint32())
            elif kind == _U64:
                values.append(r.uint64())
            elif kind == _STR:
                values.append(r.string())
            else:
                values.append(Attrs.decode(r))
        return cls(*values)


class _Extended(_Message):
    """An SSH_FXP_EXTENDED request whose name we know: ``id, name, fields...``."""

    __slots__ = ()
    TYPE = PacketType.EXTENDED
    NAME: ClassVar[bytes]

    def _body(self) -> bytes:
        body = _Message._body(self)
        return body[:4] + string(self.NAME) + body[4:]


#: Requests by packet type, and extension requests by name; filled in by the
#: class decorators below.
_REQUESTS: dict[int, type[_Message]] = {}
EXTENDED_REQUESTS: dict[bytes, type[_Extended]] = {}


def _flat(type_: PacketType, *kinds: str):
    def apply(cls):
        cls.TYPE = type_
        cls._FIELDS = kinds
        if type_ < PacketType.STATUS:
            _REQUESTS[type_] = cls
        return cls

    return apply


def _ext(name: str, *kinds: str):
    def apply(cls):
        cls.NAME = name.encode()
        cls._FIELDS = kinds
        EXTENDED_REQUESTS[cls.NAME] = cls
        return cls

    return apply


# Requests (draft §6). Every one starts with the request id.


@dataclass(frozen=True, slots=True)
class Init:
    """SSH_FXP_INIT: the client's version and extensions (draft §4)."""

    version: int = SFTP_VERSION
    extensions: tuple[tuple[bytes, bytes], ...] = ()
    TYPE: ClassVar[PacketType] = PacketType.INIT

    def _body(self) -> bytes:
        return uint32(self.version) + b"".join(string(k) + string(v) for k, v in self.extensions)


@_flat(PacketType.OPEN, _U32, _STR, _U32, _ATTRS)
@dataclass(frozen=True, slots=True)
class Open(_Message):
    """Open ``filename`` with ``pflags`` (:class:`OpenFlags`); ``attrs`` for a new file."""

    id: int
    filename: bytes
    pflags: int
    attrs: Attrs = Attrs()


@_flat(PacketType.CLOSE, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Close(_Message):
    """Close a file or directory handle."""

    id: int
    handle: bytes


@_flat(PacketType.READ, _U32, _STR, _U64, _U32)
@dataclass(frozen=True, slots=True)
class Read(_Message):
    """Read up to ``length`` bytes at ``offset``."""

    id: int
    handle: bytes
    offset: int
    length: int


@_flat(PacketType.WRITE, _U32, _STR, _U64, _STR)
@dataclass(frozen=True, slots=True)
class Write(_Message):
    """Write ``data`` at ``offset``."""

    id: int
    handle: bytes
    offset: int
    data: bytes


@_flat(PacketType.LSTAT, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Lstat(_Message):
    """Attributes of ``path``, not following a final symlink."""

    id: int
    path: bytes


@_flat(PacketType.FSTAT, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Fstat(_Message):
    """Attributes of an open handle."""

    id: int
    handle: bytes


@_flat(PacketType.SETSTAT, _U32, _STR, _ATTRS)
@dataclass(frozen=True, slots=True)
class Setstat(_Message):
    """Change the attributes of ``path``."""

    id: int
    path: bytes
    attrs: Attrs


@_flat(PacketType.FSETSTAT, _U32, _STR, _ATTRS)
@dataclass(frozen=True, slots=True)
class Fsetstat(_Message):
    """Change the attributes of an open file."""

    id: int
    handle: bytes
    attrs: Attrs


@_flat(PacketType.OPENDIR, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Opendir(_Message):
    """Open a directory for reading."""

    id: int
    path: bytes


@_flat(PacketType.READDIR, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Readdir(_Message):
    """The next entries of an open directory (EOF status when there are none)."""

    id: int
    handle: bytes


@_flat(PacketType.REMOVE, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Remove(_Message):
    """Remove a file."""

    id: int
    filename: bytes


@_flat(PacketType.MKDIR, _U32, _STR, _ATTRS)
@dataclass(frozen=True, slots=True)
class Mkdir(_Message):
    """Create a directory."""

    id: int
    path: bytes
    attrs: Attrs = Attrs()


@_flat(PacketType.RMDIR, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Rmdir(_Message):
    """Remove an empty directory."""

    id: int
    path: bytes


@_flat(PacketType.REALPATH, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Realpath(_Message):
    """Canonicalise a path (``.`` is the starting directory)."""

    id: int
    path: bytes


@_flat(PacketType.STAT, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Stat(_Message):
    """Attributes of ``path``, following symlinks."""

    id: int
    path: bytes


@_flat(PacketType.RENAME, _U32, _STR, _STR)
@dataclass(frozen=True, slots=True)
class Rename(_Message):
    """Rename; draft §6.5: fails if ``newpath`` exists (see :class:`PosixRename`)."""

    id: int
    oldpath: bytes
    newpath: bytes


@_flat(PacketType.READLINK, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Readlink(_Message):
    """The target of a symbolic link."""

    id: int
    path: bytes


@_flat(PacketType.SYMLINK, _U32, _STR, _STR)
@dataclass(frozen=True, slots=True)
class Symlink(_Message):
    """Create the symlink ``link`` pointing to ``target`` (OpenSSH order, PROTOCOL §4.1)."""

    id: int
    target: bytes
    link: bytes


# OpenSSH extensions (PROTOCOL §4.3-4.11), sent as SSH_FXP_EXTENDED.


@_ext("posix-rename@openssh.com", _U32, _STR, _STR)
@dataclass(frozen=True, slots=True)
class PosixRename(_Extended):
    """rename(2): replaces ``newpath`` if it exists (PROTOCOL §4.3)."""

    id: int
    oldpath: bytes
    newpath: bytes


@_ext("statvfs@openssh.com", _U32, _STR)
@dataclass(frozen=True, slots=True)
class Statvfs(_Extended):
    """statvfs(2) of the file system holding ``path`` (PROTOCOL §4.4)."""

    id: int
    path: bytes


@_ext("fstatvfs@openssh.com", _U32, _STR)
@dataclass(frozen=True, slots=True)
class Fstatvfs(_Extended):
    """fstatvfs(2) of an open handle (PROTOCOL §4.4)."""

    id: int
    handle: bytes


@_ext("hardlink@openssh.com", _U32, _STR, _STR)
@dataclass(frozen=True, slots=True)
class Hardlink(_Extended):
    """link(oldpath, newpath) (PROTOCOL §4.5)."""

    id: int
    oldpath: bytes
    newpath: bytes


@_ext("fsync@openssh.com", _U32, _STR)
@dataclass(frozen=True, slots=True)
class Fsync(_Extended):
    """fsync(2) an open file (PROTOCOL §4.6)."""

    id: int
    handle: bytes


@_ext("lsetstat@openssh.com", _U32, _STR, _ATTRS)
@dataclass(frozen=True, slots=True)
class Lsetstat(_Extended):
    """SETSTAT without following a final symlink (PROTOCOL §4.7)."""

    id: int
    path: bytes
    attrs: Attrs


@_ext("limits@openssh.com", _U32)
@dataclass(frozen=True, slots=True)
class Limits(_Extended):
    """Ask the server's limits; answered with a :class:`LimitsReply` (PROTOCOL §4.8)."""

    id: int


@_ext("expand-path@openssh.com", _U32, _STR)
@dataclass(frozen=True, slots=True)
class ExpandPath(_Extended):
    """REALPATH that also expands ``~`` and ``~user`` (PROTOCOL §4.9)."""

    id: int
    path: bytes


@_ext("copy-data", _U32, _STR, _U64, _U64, _STR, _U64)
@dataclass(frozen=True, slots=True)
class CopyData(_Extended):
    """Server-side copy between two handles; ``read_length`` 0 means to EOF (§4.10)."""

    id: int
    read_handle: bytes
    read_offset: int
    read_length: int
    write_handle: bytes
    write_offset: int


@_ext("home-directory", _U32, _STR)
@dataclass(frozen=True, slots=True)
class HomeDirectory(_Extended):
    """The home directory of ``username`` (empty: the session's user), a NAME reply."""

    id: int
    username: bytes


@_ext("users-groups-by-id@openssh.com", _U32, _STR, _STR)
@dataclass(frozen=True, slots=True)
class UsersGroupsById(_Extended):
    """Names for ids; ``uids``/``gids`` are packed uint32 lists (PROTOCOL §4.11)."""

    id: int
    uids: bytes
    gids: bytes


@dataclass(frozen=True, slots=True)
class ExtendedRequest:
    """An SSH_FXP_EXTENDED request we do not know: ``data`` is its raw body."""

    id: int
    request: bytes
    data: bytes = b""
    TYPE: ClassVar[PacketType] = PacketType.EXTENDED

    def _body(self) -> bytes:
        return uint32(self.id) + string(self.request) + self.data


@dataclass(frozen=True, slots=True)
class UnknownRequest:
    """A packet type that is not a request we know; answered OP_UNSUPPORTED."""

    type: int
    id: int

    def _body(self) -> bytes:
        return uint32(self.id)


# Responses (draft §7).


@dataclass(frozen=True, slots=True)
class Version:
    """SSH_FXP_VERSION: the server's version and extensions (draft §4)."""

    version: int = SFTP_VERSION
    extensions: tuple[tuple[bytes, bytes], ...] = ()
    TYPE: ClassVar[PacketType] = PacketType.VERSION

    def _body(self) -> bytes:
        return uint32(self.version) + b"".join(string(k) + string(v) for k, v in self.extensions)


@dataclass(frozen=True, slots=True)
class Status:
    """SSH_FXP_STATUS: how a request ended (draft §7)."""

    id: int
    code: int
    message: str = ""
    language: str = ""
    TYPE: ClassVar[PacketType] = PacketType.STATUS

    def _body(self) -> bytes:
        return uint32(self.id) + uint32(self.code) + string(self.message) + string(self.language)


@_flat(PacketType.HANDLE, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Handle(_Message):
    """SSH_FXP_HANDLE: an opened file or directory."""

    id: int
    handle: bytes


@_flat(PacketType.DATA, _U32, _STR)
@dataclass(frozen=True, slots=True)
class Data(_Message):
    """SSH_FXP_DATA: bytes read."""

    id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NameEntry:
    """One entry of a NAME reply; ``longname`` is ``ls -l`` style (draft §7)."""

    filename: bytes
    longname: bytes = b""
    attrs: Attrs = Attrs()

    def encode(self) -> bytes:
        """The entry's wire form."""
        return string(self.filename) + string(self.longname) + self.attrs.encode()


@dataclass(frozen=True, slots=True)
class Name:
    """SSH_FXP_NAME: directory entries, or the one name REALPATH/READLINK found."""

    id: int
    entries: tuple[NameEntry, ...]
    TYPE: ClassVar[PacketType] = PacketType.NAME

    def _body(self) -> bytes:
        return (
            uint32(self.id) + uint32(len(self.entries)) + b"".join(e.encode() for e in self.entries)
        )


@_flat(PacketType.ATTRS, _U32, _ATTRS)
@dataclass(frozen=True, slots=True)
class StatReply(_Message):
    """SSH_FXP_ATTRS: the answer to STAT, LSTAT and FSTAT."""

    id: int
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class ExtendedReply:
    """SSH_FXP_EXTENDED_REPLY: ``data`` is the extension's own body."""

    id: int
    data: bytes
    TYPE: ClassVar[PacketType] = PacketType.EXTENDED_REPLY

    def _body(self) -> bytes:
        return uint32(self.id) + self.data


# Bodies of extended replies.

_STATVFS_FIELDS = (
    "bsize",
    "frsize",
    "blocks",
    "bfree",
    "bavail",
    "files",
    "ffree",
    "favail",
    "fsid",
    "flag",
    "namemax",
)


@dataclass(frozen=True, slots=True)
class StatvfsReply:
    """The statvfs@openssh.com reply: eleven uint64s (PROTOCOL §4.4).

    ``flag`` bits: 0x1 ST_RDONLY, 0x2 ST_NOSUID.
    """

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    fsid: int
    flag: int
    namemax: int

    def encode(self) -> bytes:
        """The EXTENDED_REPLY body."""
        return b"".join(uint64(getattr(self, name)) for name in _STATVFS_FIELDS)

    @classmethod
    def decode(cls, data: bytes) -> StatvfsReply:
        """Parse an EXTENDED_REPLY body. Raises DecodeError if it is not one."""
        r = Reader(data)
        values = [r.uint64() for _ in _STATVFS_FIELDS]
        r.end()
        return cls(*values)


@dataclass(frozen=True, slots=True)
class LimitsReply:
    """The limits@openssh.com reply (PROTOCOL §4.8); 0 means "no limit"."""

    max_packet_length: int = MAX_MESSAGE
    max_read_length: int = MAX_READ
    max_write_length: int = MAX_WRITE
    max_open_handles: int = 0

    def encode(self) -> bytes:
        """The EXTENDED_REPLY body."""
        return (
            uint64(self.max_packet_length)
            + uint64(self.max_read_length)
            + uint64(self.max_write_length)
            + uint64(self.max_open_handles)
        )

    @classmethod
    def decode(cls, data: bytes) -> LimitsReply:
        """Parse an EXTENDED_REPLY body. Raises DecodeError if it is not one."""
        r = Reader(data)
        reply = cls(r.uint64(), r.uint64(), r.uint64(), r.uint64())
        r.end()
        return reply


@dataclass(frozen=True, slots=True)
class UsersGroupsReply:
    """The users-groups-by-id@openssh.com reply: one name per id asked, "" if unknown."""

    users: tuple[bytes, ...]
    groups: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The EXTENDED_REPLY body."""
        return string(b"".join(map(string, self.users))) + string(
            b"".join(map(string, self.groups))
        )

    @classmethod
    def decode(cls, data: bytes) -> UsersGroupsReply:
        """Parse an EXTENDED_REPLY body. Raises DecodeError if it is not one."""
        r = Reader(data)
        users, groups = Reader(r.string()), Reader(r.string())
        r.end()
        return cls(_strings(users), _strings(groups))


def _strings(r: Reader) -> tuple[bytes, ...]:
    out = []
    while r.remaining:
        out.append(r.string())
    return tuple(out)


def unpack_ids(packed: bytes) -> list[int]:
    """The ids of a users-groups-by-id@openssh.com request (packed uint32s).

    Raises:
        DecodeError: the length is not a multiple of four.
    """
    if len(packed) % 4:
        raise DecodeError("id list is not a whole number of uint32s")
    return [int.from_bytes(packed[i : i + 4], "big") for i in range(0, len(packed), 4)]


#: Anything :func:`decode_request` returns.
Request = Init | _Message | ExtendedRequest | UnknownRequest
#: Anything :func:`decode_response` returns.
Response = Version | Status | Handle | Data | Name | StatReply | ExtendedReply

#: What a server implementing every extension above advertises in VERSION, with the
#: versions OpenSSH advertises for them (PROTOCOL §4).
SERVER_EXTENSIONS: tuple[tuple[bytes, bytes], ...] = (
    (b"posix-rename@openssh.com", b"1"),
    (b"statvfs@openssh.com", b"2"),
    (b"fstatvfs@openssh.com", b"2"),
    (b"hardlink@openssh.com", b"1"),
    (b"fsync@openssh.com", b"1"),
    (b"lsetstat@openssh.com", b"1"),
    (b"limits@openssh.com", b"1"),
    (b"expand-path@openssh.com", b"1"),
    (b"copy-data", b"1"),
    (b"home-directory", b"1"),
    (b"users-groups-by-id@openssh.com", b"1"),
)


# --- encoding and decoding -----------------------------------------------------------


def encode(message: Request | Response) -> bytes:
    """The payload of ``message``: ``byte type || fields`` (no length prefix)."""
    type_ = message.type if isinstance(message, UnknownRequest) else message.TYPE
    return byte(type_) + message._body()


def frame(message: Request | Response | bytes) -> bytes:
    """``uint32 length || payload``, ready for the stream.

    Raises:
        LocalProtocolError: the payload is empty or over :data:`MAX_MESSAGE`.
    """
    payload = message if isinstance(message, bytes) else encode(message)
    if not payload or len(payload) > MAX_MESSAGE:
        raise LocalProtocolError(f"SFTP payload must be 1..{MAX_MESSAGE} bytes")
    return uint32(len(payload)) + payload


def _pairs(r: Reader) -> tuple[tuple[bytes, bytes], ...]:
    out = []
    while r.remaining:
        out.append((r.string(), r.string()))
    return tuple(out)


def decode_request(payload: bytes) -> Request:
    """Decode a client's packet payload.

    Raises:
        DecodeError: empty, or a known request with missing fields (sftp-server
            treats both as fatal).
    """
    r = Reader(payload)
    type_ = r.byte()
    if type_ == PacketType.INIT:
        return Init(r.uint32(), _pairs(r))
    if type_ == PacketType.EXTENDED:
        id_ = r.uint32()
        name = r.string()
        ext = EXTENDED_REQUESTS.get(name)
        if ext is None:
            return ExtendedRequest(id_, name, r.rest())
        return ext._read(r, id_)  # type: ignore[return-value]
    cls = _REQUESTS.get(type_)
    if cls is None:
        return UnknownRequest(type_, r.uint32())
    return cls._read(r)  # type: ignore[return-value]


def decode_response(payload: bytes) -> Response:
    """Decode a server's packet payload.

    Raises:
        DecodeError: not a response, truncated, or with trailing bytes.
    """
    r = Reader(payload)
    type_ = r.byte()
    msg: Response
    if type_ == PacketType.VERSION:
        return Version(r.uint32(), _pairs(r))
    if type_ == PacketType.STATUS:
        id_, code = r.uint32(), r.uint32()
        # Some version-3 servers omit the message and language tag; accept that.
        message = r.text() if r.remaining else ""
        language = r.text() if r.remaining else ""
        msg = Status(id_, code, message, language)
    elif type_ == PacketType.HANDLE:
        msg = Handle._read(r)  # type: ignore[assignment]
    elif type_ == PacketType.DATA:
        msg = Data._read(r)  # type: ignore[assignment]
    elif type_ == PacketType.ATTRS:
        msg = StatReply._read(r)  # type: ignore[assignment]
    elif type_ == PacketType.NAME:
        id_, count = r.uint32(), r.uint32()
        if count > r.remaining // 12:  # two empty strings and empty flags
            raise DecodeError(f"NAME claims {count} entries")
        entries = tuple(NameEntry(r.string(), r.string(), Attrs.decode(r)) for _ in range(count))
        msg = Name(id_, entries)
    elif type_ == PacketType.EXTENDED_REPLY:
        return ExtendedReply(r.uint32(), r.rest())
    else:
        raise DecodeError(f"SFTP packet type {type_} is not a response")
    r.end()
    return msg


# --- framing ---------------------------------------------------------------------------


class Framer:
    """Splits an SFTP byte stream into payloads. Buffers at most one packet."""

    __slots__ = ("_buffer", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self.max_message = max_message

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the stream."""
        self._buffer += data

    def next_payload(self) -> bytes | None:
        """The next complete payload, or ``None`` if more bytes are needed.

        Raises:
            DecodeError: a packet of length zero or over ``max_message``; the
                session must end (sftp-server.c: "bad message").
        """
        if len(self._buffer) < 4:
            return None
        length = int.from_bytes(self._buffer[:4], "big")
        if length == 0 or length > self.max_message:
            raise DecodeError(f"SFTP packet of {length} bytes (limit {self.max_message})")
        if len(self._buffer) < 4 + length:
            return None
        payload = bytes(self._buffer[4 : 4 + length])
        del self._buffer[: 4 + length]
        return payload

    def payloads(self) -> Iterator[bytes]:
        """Every complete payload buffered so far."""
        while (payload := self.next_payload()) is not None:
            yield payload

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a packet."""
        return len(self._buffer)


# --- session state -----------------------------------------------------------------------


class SessionState(enum.Enum):
    """Where an SFTP session is (both sides use the same three states)."""

    #: Server: waiting for INIT. Client: INIT sent, waiting for VERSION.
    AWAITING_INIT = "awaiting-init"
    #: Version exchange done: requests and responses flow.
    READY = "ready"
    #: The peer broke the protocol; the session must end, every call raises.
    ERROR = "error"


class ServerSession:
    """The server side of one SFTP session: bytes in, requests out, responses framed.

    ``receive_data(data)``, then call :meth:`next_request` until it returns
    ``None``; answer each request with :meth:`send`, which returns the bytes to
    write. The first request is always :class:`Init`, answered with
    :class:`Version` before anything else.
    """

    __slots__ = ("_framer", "_version_sent", "client_extensions", "client_version", "state")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._framer = Framer(max_message)
        self._version_sent = False
        self.state = SessionState.AWAITING_INIT
        self.client_version: int | None = None
        self.client_extensions: tuple[tuple[bytes, bytes], ...] = ()

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the client."""
        self._framer.receive_data(data)

    def next_request(self) -> Request | None:
        """The next request, or ``None`` if more bytes are needed.

        Raises:
            RemoteProtocolError: an over-long or empty packet, a malformed request,
                a request before INIT, or a second INIT. The session is then in
                ``ERROR`` and must end (sftp-server exits on each of these).
        """
        if self.state is SessionState.ERROR:
            raise RemoteProtocolError("SFTP session already failed")
        try:
            payload = self._framer.next_payload()
            if payload is None:
                return None
            request = decode_request(payload)
            if isinstance(request, Init):
                if self.state is not SessionState.AWAITING_INIT:
                    raise RemoteProtocolError("SFTP INIT received twice")
                self.client_version = request.version
                self.client_extensions = request.extensions
                self.state = SessionState.READY
            elif self.state is SessionState.AWAITING_INIT:
                raise RemoteProtocolError(f"SFTP request type {payload[0]} before INIT")
        except RemoteProtocolError:
            self.state = SessionState.ERROR
            raise
        return request

    def send(self, response: Response) -> bytes:
        """Frame ``response`` for the client.

        Raises:
            LocalProtocolError: VERSION twice or before INIT, any other response
                before VERSION, or a packet over the limit.
        """
        if isinstance(response, Version):
            if self.state is not SessionState.READY or self._version_sent:
                raise LocalProtocolError("VERSION is sent once, in answer to INIT")
            self._version_sent = True
        elif not self._version_sent:
            raise LocalProtocolError("no SFTP response may precede VERSION")
        return frame(response)


class ClientSession:
    """The client side of one SFTP session: requests framed, bytes in, responses out.

    :meth:`start` returns the INIT packet; :meth:`next_response` yields the
    :class:`Version` first and then responses. Ids come from :meth:`next_id`.
    """

    __slots__ = ("_framer", "_next_id", "server_extensions", "server_version", "state")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._framer = Framer(max_message)
        self._next_id = 0
        self.state = SessionState.AWAITING_INIT
        self.server_version: int | None = None
        self.server_extensions: dict[bytes, bytes] = {}

    def start(self, extensions: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
        """The INIT packet to send first."""
        return frame(Init(SFTP_VERSION, extensions))

    def next_id(self) -> int:
        """A fresh request id (wraps at 2**32)."""
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def send(self, request: Request) -> bytes:
        """Frame a request.

        Raises:
            LocalProtocolError: before VERSION arrived, or INIT again.
        """
        if self.state is not SessionState.READY or isinstance(request, Init):
            raise LocalProtocolError("SFTP requests go after the version exchange")
        return frame(request)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the server."""
        self._framer.receive_data(data)

    def next_response(self) -> Response | None:
        """The next response, or ``None`` if more bytes are needed.

        Raises:
            RemoteProtocolError: a malformed or over-long packet, anything but
                VERSION first, or VERSION again. The session is then in ``ERROR``.
        """
        if self.state is SessionState.ERROR:
            raise RemoteProtocolError("SFTP session already failed")
        try:
            payload = self._framer.next_payload()
            if payload is None:
                return None
            response = decode_response(payload)
            if isinstance(response, Version):
                if self.state is not SessionState.AWAITING_INIT:
                    raise RemoteProtocolError("SFTP VERSION received twice")
                self.server_version = response.version
                self.server_extensions = dict(response.extensions)
                self.state = SessionState.READY
            elif self.state is SessionState.AWAITING_INIT:
                raise RemoteProtocolError("SFTP response before VERSION")
        except RemoteProtocolError:
            self.state = SessionState.ERROR
            raise
        return response
