"""The node's journal of running sessions, so a crash does not leave them open for ever.

While a session runs the node keeps a small file for it in ``DATA_DIR/sessions``
(``<sid>.json``: the session as reported to the auth service, and the fields its
``session.end`` event will carry). A session that ends normally removes its
file. A node killed mid-session (``kill -9``, a power cut) cannot say anything at
the time; when it starts again, :func:`recover` finds the files left behind and,
for each, tells the auth service what a normal end would have: a ``session.end``
event marked ``interrupted``, the session reported ``ended``, and its partial
recording kept and flagged interrupted (``POST /v1/recordings/<sid>/interrupted``)
rather than left as an unfinished upload. The file goes only once all three
were delivered, so a second crash during recovery repeats it.

The files are a few hundred bytes, written and removed in a worker thread (file
I/O stays off the event loop); the session's bookkeeping awaits them shielded from
cancellation, so an entry is never left behind by a session cancelled mid-write.
Reading the leftovers happens once, at start-up, before the node serves.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import trio

from trioport.authclient import AuthClient
from trioport.errors import AlreadyExists, NotFound
from trioport.resources import Session, from_dict, to_dict
from trioport.roles.auth.audit_log import SESSION_END
from trioport.roles.auth.recordings import check_session_id

from .sessions import Reporter

__all__ = ["SessionJournal", "recover"]

log = logging.getLogger("trioport.node.journal")


class SessionJournal:
    """One file per running session under ``directory`` (created 0700)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)

    def _path(self, sid: str) -> pathlib.Path:
        return self.directory / f"{check_session_id(sid)}.json"

    async def started(self, session: Session, end_fields: Mapping[str, Any]) -> None:
        """Note a session that began; ``end_fields`` go into its ``session.end``."""
        sid = session.metadata.name
        text = json.dumps({"session": to_dict(session), "end": dict(end_fields)})
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._write, sid, text)

    def _write(self, sid: str, text: str) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self._path(sid).with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self._path(sid))
        except OSError as exc:  # the session goes on; only crash recovery is lost
            log.warning("cannot journal session %s: %s", sid, exc)

    async def ended(self, sid: str) -> None:
        """Forget a session that ended (or was recovered)."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._remove, sid)

    def _remove(self, sid: str) -> None:
        try:
            self._path(sid).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove journal entry of session %s: %s", sid, exc)

    def leftovers(self) -> list[tuple[Session, dict[str, Any]]]:
        """Sessions still journaled: they were running when the node last stopped."""
        out = []
        if not self.directory.is_dir():
            return out
        for path in sorted(self.directory.glob("*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                session = from_dict(doc["session"], Session, source=str(path))
                out.append((session, dict(doc["end"])))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable session journal %s (%s); removing it", path, exc)
                path.unlink(missing_ok=True)
        return out


def recover(journal: SessionJournal, reporter: Reporter, *, now: Any) -> int:
    """Queue the end of every session the journal still holds; return how many.

    Args:
        journal: this node's journal.
        reporter: delivers to the auth service, retrying while it is away.
        now: a callable giving the current time as an aware ``datetime``.
    """
    found = journal.leftovers()
    for session, end_fields in found:
        sid = session.metadata.name
        session.spec.state = "ended"
        session.spec.ended = now()

        async def close(
            client: AuthClient, session: Session = session, fields: dict = end_fields
        ) -> None:
            sid = session.metadata.name
            await client.emit_event(SESSION_END.code, **fields, interrupted=True)
            await client.put_session(session)
            try:
                await client.call("POST", f"/v1/recordings/{sid}/interrupted")
            except (NotFound, AlreadyExists):
                pass  # nothing was uploaded, or it was finished after all
            await journal.ended(sid)

        log.warning("session %s was cut short when this node last stopped; closing it", sid)
        reporter.submit(f"interrupted session {sid}", close)
    return len(found)
