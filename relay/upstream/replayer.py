"""Gateway mode, the UP direction's I/O: replay a box's journal to the operator over an
authenticated aioimaplib session (`relay.upstream.connection`), in order, once.

What to send and what the answers mean is decided in `relay.upstream.replay` (pure);
what is recorded is written by `relay.store.upjournal`. One `Replayer` per box and
session; `run` replays what is pending and stops at the first row that cannot be
done now (connection lost, an operator "not now"), so the order holds.

aioimaplib accepts `UID` only with COPY, FETCH, STORE and EXPUNGE: UID SEARCH goes
through its `uid_search`, UID MOVE through `protocol.move(by_uid=True)` (extended
around it, not replaced).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aioimaplib.aioimaplib import AioImapException

from relay.audit.events import UpstreamChangeRefused
from relay.store.mirror import JournalRow
from relay.store.store import Store
from relay.store.upjournal import LocalMessage, Mapping, Replayed, ReplayStore, Restore
from relay.upstream.connection import UpstreamSession
from relay.upstream.replay import (
    Answer,
    OperatorCaps,
    Verdict,
    appenduid,
    copyuid,
    fetched_flags,
    flag_list,
    imap_quote,
    judge,
    modified,
    search_uids,
    select_uidvalidity,
    store_args,
    uid_set,
)

__all__ = ["ImapClient", "ReplayReport", "Replayer"]

log = structlog.get_logger("relay.upstream")

COMMAND_TIMEOUT_SECONDS = 60.0  # one IMAP command; an APPEND of 25 MB fits


class ImapClient(Protocol):
    """What the replay uses of aioimaplib's `IMAP4` / `IMAP4_SSL` (logged in)."""

    protocol: Any

    async def select(self, mailbox: str = "INBOX") -> Any: ...
    async def uid(self, command: str, *criteria: str) -> Any: ...
    async def uid_search(self, *criteria: str, charset: str | None = "utf-8") -> Any: ...
    async def expunge(self) -> Any: ...
    async def create(self, mailbox_name: str) -> Any: ...
    async def rename(self, old_mailbox_name: str, new_mailbox_name: str) -> Any: ...
    async def delete(self, mailbox_name: str) -> Any: ...
    async def append(
        self,
        message_bytes: bytes,
        mailbox: str = "INBOX",
        flags: str | None = None,
        date: Any = None,
    ) -> Any: ...


class OperatorUnreachable(Exception):
    """The session broke (or timed out) mid-replay: retry the row later."""


class WaitForDownSync(Exception):
    """The folder's UIDVALIDITY changed at the operator: the remote UIDs we hold mean
    nothing until the down sync has re-matched it. Not a failure of the session: the
    round goes on with the down sync, and the row is replayed at the next round."""


@dataclass
class ReplayReport:
    """What one `run` did (for logs, `upstream sync`, tests)."""

    done: int = 0
    refused: int = 0
    retry: str | None = None  # why it stopped before the end (session unusable), if it did
    # Stopped (order kept) until the down sync has re-matched a folder: the session is
    # fine, the caller goes on with its down round.
    waiting: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Outcome:
    verdict: Verdict
    answer: str = ""
    done: Replayed = field(default_factory=Replayed)
    restore: Restore = field(default_factory=Restore)
    restored: str = ""


def _answer(response: Any) -> Answer:
    return Answer(str(response.result), tuple(bytes(x) for x in response.lines))


class Replayer:
    """Replays one box's journal over one operator session."""

    @classmethod
    def over(cls, store: Store, session: UpstreamSession) -> Replayer:
        """The replayer of `session.box` on an open session (`open_session`). The sync
        engine runs it after each down round on the same session, so a remote UID this
        replay maps is never downloaded as new."""
        return cls(
            store, session.box, session.client, OperatorCaps.from_capabilities(session.capabilities)
        )

    def __init__(
        self, store: Store, box: str, client: ImapClient, capabilities: OperatorCaps
    ) -> None:
        self.rs = ReplayStore(store)
        self.box = box.lower()
        self.client = client
        self.caps = capabilities
        self._selected: str | None = None

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> ReplayReport:
        """Replay every pending row in order; stop at the first that must wait."""
        report = ReplayReport()
        for row in await self.rs.pending(self.box):
            try:
                outcome = await self._replay(row)
            except WaitForDownSync as exc:
                await self.rs.defer(row.id, str(exc))
                report.waiting = str(exc)
                break
            except OperatorUnreachable as exc:
                await self.rs.defer(row.id, str(exc))
                report.retry = str(exc)
                break
            if outcome.verdict is Verdict.DONE:
                await self.rs.finish(row, outcome.done)
                report.done += 1
                if outcome.done.note:
                    report.notes.append(f"{row.id} {row.kind}: {outcome.done.note}")
            elif outcome.verdict is Verdict.REFUSED:
                await self._refuse(row, outcome)
                report.refused += 1
            else:
                await self.rs.defer(row.id, outcome.answer)
                report.retry = outcome.answer
                break
        return report

    async def _refuse(self, row: JournalRow, outcome: _Outcome) -> None:
        log.warning(
            "upstream.change_refused",
            box=self.box,
            journal_id=row.id,
            kind=row.kind,
            folder=row.folder,
            answer=outcome.answer,
        )
        event = UpstreamChangeRefused(
            person=row.person,
            box=self.box,
            request=f"{row.kind} {row.folder or ''}".strip(),
            answer=outcome.answer,
            journal_id=row.id,
            kind=row.kind,
            folder=row.folder,
            restored=outcome.restored,
        )
        await self.rs.refuse(row, outcome.answer, outcome.restore, event)

    async def _replay(self, row: JournalRow) -> _Outcome:
        handler = {
            "flags": self._flags,
            "expunge": self._expunge,
            "append": self._append,
            "copy": self._copy,
            "move": self._copy,
            "create": self._create,
            "rename": self._rename,
            "delete": self._delete,
        }.get(row.kind)
        if handler is None:
            return _Outcome(Verdict.REFUSED, f"unknown journal kind {row.kind!r}")
        return await handler(row)

    # --- talking to the operator -------------------------------------------------------

    async def _call(self, what: str, coro: Any) -> Answer:
        try:
            response = await asyncio.wait_for(coro, COMMAND_TIMEOUT_SECONDS)
        except (TimeoutError, OSError, AioImapException) as exc:
            # A timeout, a lost socket, aioimaplib's Abort / CommandTimeout / a command
            # in a state it no longer allows (the session was closed under it).
            self._selected = None
            raise OperatorUnreachable(f"{what}: {type(exc).__name__} {exc}".strip()) from None
        answer = _answer(response)
        if answer.result not in ("OK", "NO", "BAD"):  # BYE, a dropped line: not an answer
            self._selected = None
            raise OperatorUnreachable(f"{what}: {answer.text}")
        return answer

    async def _select(self, remote: str, uidvalidity: int = 0) -> Answer | None:
        """SELECT `remote` unless it is selected; the refusal's answer, or None.

        A UIDVALIDITY other than the one mirrored (RFC 3501 §2.3.1.1) makes every
        remote UID we hold meaningless: the row waits until the down sync has
        re-matched the folder."""
        if self._selected == remote:
            return None
        answer = await self._call(f"SELECT {remote}", self.client.select(imap_quote(remote)))
        if answer.result != "OK":
            self._selected = None
            return answer
        now = select_uidvalidity(answer)
        if uidvalidity and now is not None and now != uidvalidity:
            self._selected = None
            raise WaitForDownSync(
                f"UIDVALIDITY of {remote} is {now}, {uidvalidity} mirrored: "
                "waiting for the down sync to re-match the folder"
            )
        self._selected = remote
        return None

    async def _folder(self, folder_id: int | None, local_name: str | None) -> tuple[str, int]:
        """The operator's name of a folder and its UIDVALIDITY as mirrored (0: none)."""
        link = await self.rs.remote_folder(folder_id) if folder_id is not None else None
        if link is not None:
            return link
        return (local_name or "INBOX", 0)

    async def _search_mid(self, message_id: str) -> list[int]:
        answer = await self._call(
            "UID SEARCH",
            self.client.uid_search("HEADER", "Message-ID", imap_quote(message_id), charset=None),
        )
        return search_uids(answer) if answer.result == "OK" else []

    # --- flags ------------------------------------------------------------------------

    async def _flags(self, row: JournalRow) -> _Outcome:
        assert row.folder_id is not None
        remote, validity = await self._folder(row.folder_id, row.folder)
        changes = row.data.get("changes", [])
        local = sorted({u for c in changes for u in c["uids"]})
        maps = await self.rs.remote_uids(row.folder_id, local)
        if not maps:
            return _Outcome(Verdict.DONE, done=Replayed(note="no message at the operator"))
        refused = await self._select(remote, validity)
        if refused is not None:
            return self._refused_flags(row, refused)
        current: dict[int, Mapping] = {m.remote_uid: m for m in maps.values()}
        resync: set[int] = set()
        for change in changes:
            targets = [maps[u] for u in change["uids"] if u in maps]
            for add, flags in ((True, change["add"]), (False, change["remove"])):
                if not flags or not targets:
                    continue
                # One STORE per MODSEQ known: UNCHANGEDSINCE is one value per command.
                groups: dict[int | None, list[int]] = {}
                for m in targets:
                    mod = current[m.remote_uid].modseq if self.caps.condstore else None
                    groups.setdefault(mod if mod else None, []).append(m.remote_uid)
                for mod, ruids in sorted(groups.items(), key=lambda g: g[0] or 0):
                    args = store_args(ruids, add=add, flags=flags, unchanged_since=mod)
                    answer = await self._call("UID STORE", self.client.uid("store", *args))
                    if judge("flags", answer) is not Verdict.DONE:
                        if judge("flags", answer) is Verdict.RETRY:
                            return _Outcome(Verdict.RETRY, answer.text)
                        return self._refused_flags(row, answer)
                    for ruid, (modseq, have) in fetched_flags(answer).items():
                        if ruid in current:
                            old = current[ruid]
                            current[ruid] = Mapping(
                                old.folder_id, ruid, old.local_uid, modseq or old.modseq, have
                            )
                    if modified(answer):
                        # Changed at the operator meanwhile: the operator wins (RFC 7162
                        # §3.1.3); the down sync brings the local flags to its state.
                        resync.add(row.folder_id)
        updated = tuple(m for m in current.values() if m != maps.get(m.local_uid))
        return _Outcome(Verdict.DONE, done=Replayed(updated=updated, resync=frozenset(resync)))

    def _refused_flags(self, row: JournalRow, answer: Answer) -> _Outcome:
        assert row.folder_id is not None
        return _Outcome(
            Verdict.REFUSED,
            answer.text,
            restore=Restore(resync=frozenset({row.folder_id})),
            restored="flags re-compared with the operator's",
        )

    # --- expunge ----------------------------------------------------------------------

    async def _expunge(self, row: JournalRow) -> _Outcome:
        assert row.folder_id is not None
        remote, validity = await self._folder(row.folder_id, row.folder)
        maps = await self.rs.remote_uids(row.folder_id, row.data["uids"])
        if not maps:
            return _Outcome(Verdict.DONE, done=Replayed(note="no message at the operator"))
        ruids = sorted(m.remote_uid for m in maps.values())
        gone = tuple((row.folder_id, r) for r in ruids)
        refusal = Restore(forget=gone, resync=frozenset({row.folder_id}))
        restored = "messages brought back from the operator"
        answer = await self._select(remote, validity)
        if answer is None:
            answer = await self._call(
                "UID STORE \\Deleted",
                self.client.uid("store", uid_set(ruids), "+FLAGS.SILENT", "(\\Deleted)"),
            )
        if answer.result == "OK":
            if self.caps.uidplus:
                answer = await self._call("UID EXPUNGE", self.client.uid("expunge", uid_set(ruids)))
            else:  # RFC 3501 §6.4.3: every \Deleted message of the folder goes
                answer = await self._call("EXPUNGE", self.client.expunge())
        verdict = judge("expunge", answer)
        if verdict is Verdict.DONE:
            return _Outcome(Verdict.DONE, done=Replayed(unmapped=gone))
        return _Outcome(verdict, answer.text, restore=refusal, restored=restored)

    # --- append -----------------------------------------------------------------------

    async def _append(self, row: JournalRow) -> _Outcome:
        assert row.folder_id is not None
        remote, _ = await self._folder(row.folder_id, row.folder)
        messages = await self.rs.local_messages(row.folder_id, row.data["uids"], person=row.person)
        if not messages:
            return _Outcome(Verdict.DONE, done=Replayed(note="expunged here before it went up"))
        mapped: list[Mapping] = []
        todo = list(messages)
        if row.in_flight is not None:
            # A replay cut short: what is already there is not sent again.
            found, todo = await self._already_there(row.folder_id, remote, messages)
            mapped += found
        if todo:
            await self.rs.mark_in_flight(row.id, {"append": [m.uid for m in todo]})
        for msg in todo:
            answer = await self._call(
                "APPEND",
                self.client.append(
                    msg.raw,
                    mailbox=imap_quote(remote),
                    flags=flag_list(msg.flags),
                    date=msg.internal_date,
                ),
            )
            verdict = judge("append", answer)
            if verdict is Verdict.RETRY:
                return _Outcome(Verdict.RETRY, answer.text)
            if verdict is Verdict.REFUSED:
                left = tuple(m.uid for m in messages if m.uid not in {x.local_uid for x in mapped})
                return _Outcome(
                    Verdict.REFUSED,
                    answer.text,
                    restore=Restore(remove_local=((row.folder_id, left),)),
                    restored="the local copy removed (the operator does not have it)",
                )
            uid = appenduid(answer)
            if uid is not None:
                mapped.append(Mapping(row.folder_id, uid[1], msg.uid, 0, msg.flags))
            else:  # no UIDPLUS: find it by its Message-ID
                found, _ = await self._already_there(row.folder_id, remote, [msg])
                mapped += found
        return _Outcome(Verdict.DONE, done=Replayed(mapped=tuple(mapped)))

    async def _already_there(
        self, folder_id: int, remote: str, messages: Sequence[LocalMessage]
    ) -> tuple[list[Mapping], list[LocalMessage]]:
        """The messages found in `remote` by Message-ID at a UID no local message has
        (ours, from the cut attempt), and those still to send."""
        refused = await self._select(remote)
        found: list[Mapping] = []
        todo: list[LocalMessage] = []
        for msg in messages:
            if refused is not None or not msg.message_id:
                todo.append(msg)
                continue
            uids = await self._search_mid(msg.message_id)
            taken = await self.rs.mapped_remote(folder_id, uids)
            free = [u for u in uids if u not in taken and u not in {f.remote_uid for f in found}]
            if free:
                found.append(Mapping(folder_id, max(free), msg.uid, 0, msg.flags))
            else:
                todo.append(msg)
        return found, todo

    # --- copy and move ----------------------------------------------------------------

    async def _copy(self, row: JournalRow) -> _Outcome:
        assert row.folder_id is not None
        move = row.kind == "move"
        data = row.data
        dest_id = int(data["dest_folder_id"])
        src_remote, src_validity = await self._folder(row.folder_id, row.folder)
        dst_remote, _ = await self._folder(dest_id, data["dest_folder"])
        pairs = dict(zip(data["uids"], data["dest_uids"], strict=True))  # local src -> dst
        maps = await self.rs.remote_uids(row.folder_id, list(pairs))
        if not maps:
            return _Outcome(Verdict.DONE, done=Replayed(note="no message at the operator"))
        ruids = sorted(m.remote_uid for m in maps.values())
        dest_local = {maps[s].remote_uid: pairs[s] for s in maps}  # remote src -> local dst
        undo = Restore(
            remove_local=((dest_id, tuple(pairs.values())),),
            forget=tuple((row.folder_id, r) for r in ruids) if move else (),
            resync=frozenset({row.folder_id}) if move else frozenset(),
        )
        restored = "the local copies removed" + (
            ", the originals brought back from the operator" if move else ""
        )
        copies = {
            m.uid: m
            for m in await self.rs.local_messages(dest_id, list(pairs.values()), person=row.person)
        }
        mapped: list[Mapping] = []
        if row.in_flight is not None:
            found, _ = await self._already_there(dest_id, dst_remote, list(copies.values()))
            mapped += found
            done_locals = {f.local_uid for f in found}
            ruids = [r for r in ruids if dest_local[r] not in done_locals]
            if not ruids:
                gone = tuple((row.folder_id, maps[s].remote_uid) for s in maps) if move else ()
                return _Outcome(
                    Verdict.DONE,
                    done=Replayed(mapped=tuple(mapped), unmapped=gone, note="already done"),
                )
        refused = await self._select(src_remote, src_validity)
        if refused is not None:
            return _Outcome(judge(row.kind, refused), refused.text, restore=undo, restored=restored)
        await self.rs.mark_in_flight(row.id, {row.kind: ruids})
        if move and self.caps.move:
            answer = await self._call(
                "UID MOVE",
                self.client.protocol.move(uid_set(ruids), imap_quote(dst_remote), by_uid=True),
            )
        else:
            answer = await self._call(
                "UID COPY", self.client.uid("copy", uid_set(ruids), imap_quote(dst_remote))
            )
            if answer.result == "OK" and move:
                copied = answer
                answer = await self._call(
                    "UID STORE \\Deleted",
                    self.client.uid("store", uid_set(ruids), "+FLAGS.SILENT", "(\\Deleted)"),
                )
                if answer.result == "OK":
                    answer = await self._call(
                        "UID EXPUNGE" if self.caps.uidplus else "EXPUNGE",
                        self.client.uid("expunge", uid_set(ruids))
                        if self.caps.uidplus
                        else self.client.expunge(),
                    )
                if answer.result == "OK":
                    answer = Answer(answer.result, copied.lines + answer.lines)
        verdict = judge(row.kind, answer)
        if verdict is not Verdict.DONE:
            return _Outcome(verdict, answer.text, restore=undo, restored=restored)
        pairing = copyuid(answer)
        if pairing is not None:
            for rsrc, rdst in pairing[1].items():
                local = dest_local.get(rsrc)
                if local is not None:
                    flags = copies[local].flags if local in copies else frozenset()
                    mapped.append(Mapping(dest_id, rdst, local, 0, flags))
        else:  # no UIDPLUS: find the copies by Message-ID
            self._selected = None
            left = [copies[dest_local[r]] for r in ruids if dest_local[r] in copies]
            found, _ = await self._already_there(dest_id, dst_remote, left)
            mapped += found
        gone = tuple((row.folder_id, m.remote_uid) for m in maps.values()) if move else ()
        return _Outcome(Verdict.DONE, done=Replayed(mapped=tuple(mapped), unmapped=gone))

    # --- folders ----------------------------------------------------------------------

    async def _create(self, row: JournalRow) -> _Outcome:
        assert row.folder_id is not None and row.folder is not None
        answer = await self._call("CREATE", self.client.create(imap_quote(row.folder)))
        verdict = judge("create", answer)
        if verdict is Verdict.DONE:
            return _Outcome(Verdict.DONE, done=Replayed(link=(row.folder_id, row.folder)))
        return _Outcome(
            verdict,
            answer.text,
            restore=Restore(drop_folder=(self.box, row.folder)),
            restored="the local folder removed if empty",
        )

    async def _rename(self, row: JournalRow) -> _Outcome:
        assert row.folder_id is not None and row.folder is not None
        old, _ = await self._folder(row.folder_id, row.folder)
        new = str(row.data["new"])
        if row.in_flight is None:
            await self.rs.mark_in_flight(row.id, {"rename": [old, new]})
        if self._selected is not None and (
            self._selected == old or self._selected.startswith(old + "/")
        ):
            self._selected = None
        answer = await self._call("RENAME", self.client.rename(imap_quote(old), imap_quote(new)))
        verdict = judge("rename", answer)
        if (
            verdict is Verdict.REFUSED
            and row.in_flight is not None
            and "NONEXISTENT" in answer.text
        ):
            verdict = Verdict.DONE  # renamed by the attempt a crash cut short
        if verdict is Verdict.DONE:
            return _Outcome(Verdict.DONE, done=Replayed(renamed=(old, new)))
        return _Outcome(
            verdict,
            answer.text,
            restore=Restore(rename_back=(self.box, new, row.folder)),
            restored="the folder renamed back",
        )

    async def _delete(self, row: JournalRow) -> _Outcome:
        assert row.folder is not None
        remote = str(row.data.get("remote") or row.folder)
        if self._selected == remote:
            self._selected = None
        answer = await self._call("DELETE", self.client.delete(imap_quote(remote)))
        verdict = judge("delete", answer)
        if verdict is Verdict.DONE:
            return _Outcome(Verdict.DONE)
        return _Outcome(
            verdict,
            answer.text,
            restored="none here (the folder is gone locally; the down sync mirrors it again)",
        )
