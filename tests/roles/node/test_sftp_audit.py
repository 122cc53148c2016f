"""The SFTP auditor: the node's view of an SFTP session, turned into audit events.

The two byte streams are built with the protocol's own codecs (what a client and
sftp-server would send) and fed in pieces, as the node's copy loop sees them.
"""

from __future__ import annotations

from typing import Any

from trioport.roles.auth import audit_log
from trioport.roles.node.sftp_audit import MAX_PENDING, SftpAuditor
from trioport.sshproto import sftp
from trioport.sshproto.sftp import OpenFlags, StatusCode

HOME = "/home/alice"


class Session:
    """An auditor fed a conversation, one request and its answer at a time."""

    def __init__(self) -> None:
        self.auditor = SftpAuditor(HOME)
        self.events: list[tuple[audit_log.EventCode, dict[str, Any]]] = []
        self.ask(sftp.Init(3))
        self.answer(sftp.Version(3))

    def ask(self, request: sftp.Request) -> None:
        data = sftp.frame(request)
        for i in range(0, len(data), 7):  # in pieces: frames span reads
            self.events += self.auditor.client_data(data[i : i + 7])

    def answer(self, response: sftp.Response) -> None:
        data = sftp.frame(response)
        self.events += self.auditor.server_data(data[:3])
        self.events += self.auditor.server_data(data[3:])

    def ok(self, id_: int) -> None:
        self.answer(sftp.Status(id_, StatusCode.OK, "Success"))


def test_an_upload_is_an_open_event_and_its_bytes_are_in_the_summary() -> None:
    s = Session()
    flags = OpenFlags.WRITE | OpenFlags.CREAT | OpenFlags.TRUNC
    s.ask(sftp.Open(1, b"up.bin", flags))
    s.answer(sftp.Handle(1, b"h1"))
    s.ask(sftp.Write(2, b"h1", 0, b"x" * 1000))
    s.ask(sftp.Write(3, b"h1", 1000, b"y" * 500))
    s.ok(2)
    s.ok(3)
    s.ask(sftp.Fsetstat(4, b"h1", sftp.Attrs(permissions=0o100640)))
    s.ok(4)
    s.ask(sftp.Close(5, b"h1"))
    s.ok(5)
    (code, opened), (code2, fsetstat) = s.events
    assert code == audit_log.SFTP_OPEN
    assert opened == {
        "action": "open",
        "working_directory": HOME,
        "path": f"{HOME}/up.bin",
        "flags": ["write", "create", "truncate"],
        "success": True,
    }
    assert code2 == audit_log.SFTP_FSETSTAT
    assert fsetstat["path"] == f"{HOME}/up.bin"
    assert fsetstat["attributes"] == {"permissions": "0640"}
    summary_code, summary = s.auditor.summary()  # type: ignore[misc]
    assert summary_code == audit_log.SFTP_SUMMARY
    assert summary["file_transfer_stats"] == [
        {"path": f"{HOME}/up.bin", "bytes_read": 0, "bytes_written": 1500}
    ]


def test_a_download_counts_the_bytes_read_and_a_reused_handle_names_the_new_file() -> None:
    s = Session()
    s.ask(sftp.Open(1, b"/etc/hostname", OpenFlags.READ))
    s.answer(sftp.Handle(1, b"h"))
    s.ask(sftp.Read(2, b"h", 0, 32768))
    s.answer(sftp.Data(2, b"node1\n"))
    s.ask(sftp.Read(3, b"h", 6, 32768))
    s.answer(sftp.Status(3, StatusCode.EOF, "End of file"))
    s.ask(sftp.Close(4, b"h"))
    s.ok(4)
    s.ask(sftp.Open(5, b"other", OpenFlags.READ))
    s.answer(sftp.Handle(5, b"h"))  # the same handle string, a new file
    s.ask(sftp.Read(6, b"h", 0, 10))
    s.answer(sftp.Data(6, b"abc"))
    _, summary = s.auditor.summary()  # type: ignore[misc]
    assert summary["file_transfer_stats"] == [
        {"path": "/etc/hostname", "bytes_read": 6, "bytes_written": 0},
        {"path": f"{HOME}/other", "bytes_read": 3, "bytes_written": 0},
    ]


def test_refusals_are_failure_events_with_the_servers_reason() -> None:
    s = Session()
    s.ask(sftp.Open(1, b"/etc/shadow", OpenFlags.READ))
    s.answer(sftp.Status(1, StatusCode.PERMISSION_DENIED, "Permission denied"))
    s.ask(sftp.Remove(2, b"missing"))
    s.answer(sftp.Status(2, StatusCode.NO_SUCH_FILE, "No such file"))
    (c1, open_failed), (c2, remove_failed) = s.events
    assert c1 == audit_log.SFTP_OPEN_FAILURE and c1.code == "TS001E"
    assert open_failed["success"] is False and open_failed["error"] == "Permission denied"
    assert c2.code == "TS011E" and remove_failed["path"] == f"{HOME}/missing"
    assert s.auditor.summary() is None  # no bytes moved


def test_each_changing_operation_is_an_event_and_reading_ones_are_not() -> None:
    s = Session()
    requests: list[sftp.Request] = [
        sftp.Stat(1, b"a"),
        sftp.Lstat(2, b"a"),
        sftp.Realpath(3, b"."),
        sftp.Mkdir(4, b"dir"),
        sftp.Rmdir(5, b"/tmp/old"),
        sftp.Rename(6, b"a", b"b"),
        sftp.PosixRename(7, b"b", b"dir/c"),
        sftp.Symlink(8, b"../target", b"dir/link"),
        sftp.Hardlink(9, b"dir/c", b"dir/hard"),
        sftp.Setstat(10, b"dir/c", sftp.Attrs(size=0, atime=1, mtime=2)),
        sftp.Lsetstat(11, b"dir/link", sftp.Attrs(uid=1000, gid=1000)),
    ]
    for r in requests:
        s.ask(r)
    for r in requests:
        s.ok(r.id)  # type: ignore[union-attr]
    got = [(code.code, f["action"], f["path"], f.get("target_path")) for code, f in s.events]
    assert got == [
        ("TS012I", "mkdir", f"{HOME}/dir", None),
        ("TS013I", "rmdir", "/tmp/old", None),
        ("TS016I", "rename", f"{HOME}/a", f"{HOME}/b"),
        ("TS016I", "rename", f"{HOME}/b", f"{HOME}/dir/c"),
        ("TS018I", "symlink", f"{HOME}/dir/link", "../target"),
        ("TS019I", "link", f"{HOME}/dir/hard", f"{HOME}/dir/c"),
        ("TS007I", "setstat", f"{HOME}/dir/c", None),
        ("TS007I", "setstat", f"{HOME}/dir/link", None),
    ]
    assert s.events[6][1]["attributes"] == {"size": 0, "atime": 1, "mtime": 2}
    assert s.events[7][1]["attributes"] == {"uid": 1000, "gid": 1000}


def test_a_listing_is_one_opendir_event() -> None:
    s = Session()
    s.ask(sftp.Opendir(1, b""))
    s.answer(sftp.Handle(1, b"d"))
    s.ask(sftp.Readdir(2, b"d"))
    s.answer(sftp.Name(2, ()))
    ((code, fields),) = s.events
    assert code.code == "TS009I" and fields["path"] == HOME


def test_a_stream_it_cannot_follow_stops_the_auditing_without_raising() -> None:
    s = Session()
    s.events += s.auditor.client_data(b"\x00\x00\x00\x00")  # a zero-length packet
    assert s.auditor.broken
    s.ask(sftp.Mkdir(1, b"later"))
    s.ok(1)
    assert s.events == []


def test_a_client_that_never_reads_answers_cannot_grow_the_auditor_without_bound() -> None:
    s = Session()
    for i in range(MAX_PENDING + 10):
        s.ask(sftp.Mkdir(i, b"d"))
    assert s.auditor.untracked == 10
    s.ok(MAX_PENDING + 9)
    assert [f["action"] for _, f in s.events] == ["mkdir"]
