"""Gateway mode, the DOWN direction: mirror a box hosted at an MSSanté operator.

One `BoxSync` per box with an `[mailboxes.upstream]` table, one `UpstreamSync` to start
and stop them all (`relay.app`). A box's loop:

1. open an authenticated session (`relay.upstream.connection`);
2. replay the journal of local changes (`relay.upstream.replayer`), so that what a
   co-holder did reaches the operator before the operator's state is compared;
3. for every folder to mirror (`UpstreamConfig.mirrors`, INBOX always): SELECT, then
   compare (`relay.upstream.plan`) the operator's UIDs and flags with the local map and
   apply it: download new messages (sealed at rest like every message), the
   operator's flag changes, its expunges; a UIDVALIDITY change re-matches by
   Message-ID and size. With CONDSTORE (RFC 7162) a folder whose HIGHESTMODSEQ,
   UIDNEXT and message count are unchanged is skipped, and only flags changed since
   the last HIGHESTMODSEQ are fetched (CHANGEDSINCE, §3.1.4.1);
4. wait: IDLE on INBOX (RFC 2177) when the operator offers it, so a new message
   comes down within moments; the other folders every `poll_interval_seconds`.

Every write goes through `relay.store.downsync`, which touches the folders changed:
co-holders' IMAP sessions (IDLE included) hear of new messages, flag changes and
expunges as they do of an SMTP delivery.

Faults: an unreachable operator (down, restarting, TLS failure, connection lost) puts
the box in state `unreachable` and the loop retries with exponential backoff (1 s to
5 min); local reads never wait on it (they read the store). A refused credential logs
one line, writes one audit event and sets state `credentials_refused`, and the same
credential is not tried again: the loop only checks, each poll interval, whether the
password file (or certificate) changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aioimaplib.aioimaplib import STOP_WAIT_SERVER_PUSH, AioImapException

from relay.audit.events import UpstreamCredentialsRefused
from relay.config.model import UpstreamConfig
from relay.store.downsync import Downloaded, DownStore, FolderLink
from relay.store.mirror import MirrorStore
from relay.store.store import Store
from relay.upstream.connection import (
    CredentialsRefused,
    Unreachable,
    UpstreamError,
    UpstreamSession,
    open_session,
)
from relay.upstream.plan import (
    RemoteCopy,
    RemoteFolder,
    clean_flags,
    plan_folder,
    rematch,
)
from relay.upstream.replay import (
    FLAGS_ITEM,
    MODSEQ_ITEM,
    UID_ITEM,
    Answer,
    OperatorCaps,
    fetched_flags,
    search_uids,
    uid_set,
)

__all__ = ["BoxSync", "UpstreamSync"]

log = structlog.get_logger("relay.upstream")

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
# aioimaplib parses a read's lines recursively (one stack frame per line): an answer
# of thousands of lines in one read overflows Python's stack (RecursionError, found
# with 10,000 messages). Every FETCH therefore names at most this many UIDs: their
# lines stay well under the recursion limit whatever the read size.
FLAGS_BATCH_UIDS = 250
FETCH_BATCH_MESSAGES = 100  # one UID FETCH of bodies and one store transaction
COMMAND_TIMEOUT_SECONDS = 120.0  # a FETCH of a batch of big messages fits
IDLE_RESTART_SECONDS = 25 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes
STOP_RECANCEL_SECONDS = 5.0  # a loop not ended by then (its LOGOUT waits 2 s) is cancelled again


class _Lost(Exception):
    """The session broke while waiting."""


# --- parsing the operator's answers (aioimaplib gives lines and literals) -------------

_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>NIL|"(?:[^"\\]|\\.)") (?P<name>.*)$')
_INTERNALDATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LITERAL_HEAD = re.compile(rb"^\d+ FETCH \((.*)\{(\d+)\}$")
_CODE_NUMBER = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS$")
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<?([^>\r\n]*)>?", re.IGNORECASE | re.MULTILINE)


def _unquote(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_list(lines: Sequence[Any]) -> list[tuple[str, str]]:
    """(remote name, local name) of every selectable folder of a LIST answer. The local
    name uses "/" as the store does; names stay in modified UTF-7 (RFC 3501 §5.1.3),
    the form the store keeps."""
    out = []
    items = list(lines)
    i = 0
    while i < len(items):
        line = items[i]
        i += 1
        if not isinstance(line, bytes | bytearray):
            continue
        m = _LIST.match(bytes(line))
        if m is None:
            continue
        attrs = m.group("attrs").lower().split()
        name_raw = m.group("name")
        lit = re.match(rb"^\{(\d+)\}$", name_raw)
        if lit and i < len(items):
            name = bytes(items[i]).decode("utf-8", "replace")
            i += 1
        else:
            name = _unquote(name_raw)
        if b"\\noselect" in attrs or b"\\nonexistent" in attrs:
            continue
        delim = m.group("delim")
        sep = None if delim == b"NIL" else _unquote(delim)
        local = name.replace(sep, "/") if sep and sep != "/" else name
        if local.upper() == "INBOX":
            local = name = "INBOX"
        out.append((name, local))
    return out


@dataclass(frozen=True, slots=True)
class Selected:
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int  # 0 without CONDSTORE


def parse_select(lines: Sequence[Any]) -> Selected:
    values: dict[bytes, int] = {}
    exists = 0
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        for key, num in _CODE_NUMBER.findall(bytes(line)):
            values[key] = int(num)
        m = _EXISTS.match(bytes(line))
        if m:
            exists = int(m.group(1))
    if b"UIDVALIDITY" not in values:
        raise UpstreamError("the operator's SELECT answer has no UIDVALIDITY")
    return Selected(
        values[b"UIDVALIDITY"],
        values.get(b"UIDNEXT", 0),
        exists,
        values.get(b"HIGHESTMODSEQ", 0),
    )


def _internaldate(text: bytes | None) -> dt.datetime:
    if text:
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    return dt.datetime.now(dt.UTC)


def fetched_literals(lines: Sequence[Any]) -> Iterator[tuple[bytes, bytes]]:
    """(the FETCH's items as text, the literal) for each message of a `UID FETCH`
    answer carrying one literal per message, as aioimaplib gives it: a line ending in
    the literal's size, the literal, then the rest of the response."""
    items = list(lines)
    i = 0
    while i < len(items):
        line = items[i]
        i += 1
        if not isinstance(line, bytes | bytearray):
            continue
        m = _LITERAL_HEAD.match(bytes(line))
        if m is None or i >= len(items):
            continue
        literal = bytes(items[i])
        i += 1
        tail = bytes(items[i]) if i < len(items) and isinstance(items[i], bytes) else b""
        if tail.endswith(b")"):
            i += 1
        yield m.group(1) + b" " + tail, literal


def parse_fetched_bodies(lines: Sequence[Any]) -> list[Downloaded]:
    """The messages of a `UID FETCH (UID FLAGS INTERNALDATE BODY.PEEK[])` answer."""
    out = []
    for text, body in fetched_literals(lines):
        uid = UID_ITEM.search(text)
        if uid is None:
            continue
        flags = FLAGS_ITEM.search(text)
        modseq = MODSEQ_ITEM.search(text)
        date = _INTERNALDATE.search(text)
        out.append(
            Downloaded(
                remote_uid=int(uid.group(1)),
                raw=body,
                flags=clean_flags(flags.group(1).decode("utf-8", "replace").split())
                if flags
                else frozenset(),
                internal_date=_internaldate(date.group(1) if date else None),
                modseq=int(modseq.group(1)) if modseq else 0,
            )
        )
    return out


def parse_fetched_ids(lines: Sequence[Any]) -> list[RemoteCopy]:
    """`UID FETCH (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])`."""
    out = []
    for text, header in fetched_literals(lines):
        uid, size, flags = UID_ITEM.search(text), _SIZE.search(text), FLAGS_ITEM.search(text)
        if uid is None or size is None:
            continue
        mid = _MESSAGE_ID.search(header)
        out.append(
            RemoteCopy(
                int(uid.group(1)),
                mid.group(1).decode("utf-8", "replace").strip() if mid else None,
                int(size.group(1)),
                clean_flags(flags.group(1).decode().split()) if flags else frozenset(),
            )
        )
    return out


def _answer(response: Any) -> Answer:
    return Answer(
        str(response.result), tuple(bytes(x) for x in response.lines if isinstance(x, bytes))
    )


def credential_fingerprint(up: UpstreamConfig) -> str:
    """What identifies the credential tried: a digest of the password file's content
    (or of the certificate and key), so a refused one is not retried until it changes."""
    h = hashlib.sha256(up.login.encode())
    for path in (up.password_file, up.certificate, up.key):
        if path is None:
            continue
        try:
            h.update(Path(path).read_bytes())
        except OSError as exc:
            h.update(f"unreadable {exc.errno}".encode())
    return h.hexdigest()


# --- one box ----------------------------------------------------------------------------


class BoxSync:
    """The loop mirroring one box. `config()` gives the box's current upstream table
    (None: no longer mirrored, the loop ends)."""

    def __init__(
        self,
        store: Store,
        box: str,
        config: Callable[[], UpstreamConfig | None],
        *,
        minimum_tls_version: Callable[[], str] = lambda: "1.2",
        replay: bool = True,
    ) -> None:
        self.store = store
        self.box = box.lower()
        self.config = config
        self.minimum_tls_version = minimum_tls_version
        self.replay = replay
        self.down = DownStore(store)
        self.rounds = 0  # completed comparisons of every folder (tests, bench)
        self.round_done = asyncio.Condition()
        self.state = "never"
        self._wake = asyncio.Event()
        self._refused: str | None = None  # fingerprint of the refused credential
        # What the last comparison saw of each remote folder (SELECT's numbers).
        self._compared: dict[str, Selected] = {}
        self.idling = asyncio.Event()  # set while IDLE runs on the operator's INBOX
        self.in_round = False  # replaying or comparing (our own writes are under way)
        self.folder_ids: frozenset[int] = frozenset()  # local folders linked

    def wake(self) -> None:
        """Compare now (a local change to replay, `upstream sync`)."""
        self._wake.set()

    async def wait_rounds(self, n: int, timeout_seconds: float) -> None:
        """Until `rounds` reaches `n` (tests and the benchmark)."""
        async with asyncio.timeout(timeout_seconds), self.round_done:
            await self.round_done.wait_for(lambda: self.rounds >= n)

    async def run(self) -> None:
        backoff = BACKOFF_FIRST_SECONDS
        last_error: str | None = None
        while True:
            up = self.config()
            if up is None:
                return
            if self._refused is not None:
                if await asyncio.to_thread(credential_fingerprint, up) == self._refused:
                    await self._sleep(up.poll_interval_seconds)
                    continue
                self._refused = None
            try:
                session = await open_session(
                    self.box, up, minimum_tls_version=self.minimum_tls_version()
                )
            except CredentialsRefused as exc:
                await self._credentials_refused(up, exc)
                continue
            except UpstreamError as exc:
                if str(exc) != last_error:
                    log.warning("upstream.unreachable", box=self.box, reason=str(exc))
                    last_error = str(exc)
                await self._set_state("unreachable", error=str(exc))
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            if last_error is not None:
                log.info("upstream.reachable", box=self.box)
            last_error = None
            try:
                await self._serve(session, up)
                backoff = BACKOFF_FIRST_SECONDS
            except (UpstreamError, AioImapException, OSError, TimeoutError, _Lost) as exc:
                reason = str(exc) or type(exc).__name__
                log.warning("upstream.session_lost", box=self.box, reason=reason)
                await self._set_state("unreachable", error=reason)
                last_error = reason
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            except Exception as exc:
                # A bug here must not end the box's mirroring for good: logged with its
                # traceback, state "error", retried with the same backoff.
                reason = f"internal error: {type(exc).__name__}: {exc}"
                log.exception("upstream.sync_failed", box=self.box)
                await self._set_state("error", error=reason)
                last_error = reason
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            finally:
                await session.logout()

    async def _sleep(self, seconds: float) -> None:
        """`seconds`, or less if `wake()` was called (since the last wake-up too)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _credentials_refused(self, up: UpstreamConfig, exc: CredentialsRefused) -> None:
        self._refused = await asyncio.to_thread(credential_fingerprint, up)
        endpoint = up.imap.url("imaps", "imap")
        log.error(
            "upstream.credentials_refused",
            box=self.box,
            endpoint=endpoint,
            reason=str(exc),
            retry="when the password file or certificate changes",
        )
        await self._set_state(
            "credentials_refused",
            error=str(exc),
            event=UpstreamCredentialsRefused(box=self.box, endpoint=endpoint, reason=str(exc)),
        )

    async def _set_state(self, state: str, **kwargs: Any) -> None:
        await self.down.set_state(self.box, state, **kwargs)
        self.state = state  # once committed: what `upstream status` reads

    # --- a session ----------------------------------------------------------------

    async def _serve(self, session: UpstreamSession, up: UpstreamConfig) -> None:
        lost = asyncio.Event()
        session.client.protocol.conn_lost_cb = lambda _exc: lost.set()
        caps = session.capabilities
        condstore = "CONDSTORE" in caps or "QRESYNC" in caps
        if condstore and "ENABLE" in caps:
            await session.client.enable("CONDSTORE")
        await self._set_state("syncing", capabilities=" ".join(sorted(caps)))
        mirror = MirrorStore(self.store)
        while True:
            if self.config() != up:
                return  # reloaded: reconnect with the new table
            self.in_round = True
            try:
                if self.replay:
                    await self._replay(session)
                after_replay = await mirror.pending_count(self.box)
                await self.sync_folders(session, up, condstore=condstore)
                self.folder_ids = frozenset(
                    link.folder_id for link in await self.down.links(self.box)
                )
                # A co-holder's change committed during the round (its commit was not
                # a wake-up: our own writes touch the same folders): go round again.
                again = await mirror.pending_count(self.box) > after_replay
            finally:
                self.in_round = False
            await self._set_state("idle", synced=True)
            async with self.round_done:
                self.rounds += 1
                self.round_done.notify_all()
            if not again:
                await self._wait(session, up, lost)

    async def _replay(self, session: UpstreamSession) -> None:
        from relay.upstream.replayer import Replayer  # the UP direction

        replayer = Replayer(
            self.store,
            self.box,
            session.client,
            OperatorCaps.from_capabilities(session.capabilities),
        )
        report = await replayer.run()
        if report.retry:
            raise Unreachable(f"replay stopped: {report.retry}")

    async def _wait(
        self, session: UpstreamSession, up: UpstreamConfig, lost: asyncio.Event
    ) -> None:
        """IDLE on INBOX until the operator reports a change, the poll interval ends,
        or `wake()`; without IDLE, sleep the interval."""
        client = session.client
        if not (up.idle and session.has("IDLE")):
            await self._sleep(up.poll_interval_seconds)
            if lost.is_set():
                raise _Lost("connection lost")
            return
        # A change made at the operator between the comparison of INBOX and this SELECT
        # is not pushed by IDLE (the SELECT shows it silently): compare the numbers,
        # and go round again if they moved (with CONDSTORE, HIGHESTMODSEQ moves with
        # every flag change and expunge too, RFC 7162 §3.1.2).
        # aioimaplib does not fail a command when the connection drops (it waits for
        # its timeout, IDLE has none): both race the connection-lost signal.
        response = await _unless_lost(client.select("INBOX"), lost)
        if response.result != "OK":
            raise UpstreamError(f"SELECT INBOX refused: {_answer(response).text}")
        if parse_select(response.lines) != self._compared.get("INBOX"):
            return
        seconds = min(up.poll_interval_seconds, IDLE_RESTART_SECONDS)
        idle = await _unless_lost(client.idle_start(timeout=seconds), lost)
        self.idling.set()
        waker = asyncio.ensure_future(self._wake.wait())
        gone = asyncio.ensure_future(lost.wait())
        try:
            while client.has_pending_idle():
                push = asyncio.ensure_future(client.wait_server_push(timeout=seconds + 5))
                done, _ = await asyncio.wait(
                    {push, waker, gone}, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    push.cancel()
                    raise _Lost("connection lost while idle")
                if waker in done:
                    push.cancel()
                    self._wake.clear()
                    break
                msg = push.result()
                if msg == STOP_WAIT_SERVER_PUSH:
                    break
                if any(
                    isinstance(line, bytes)
                    and (line.endswith((b"EXISTS", b"EXPUNGE")) or b"FETCH" in line)
                    for line in msg
                ):
                    break
        finally:
            self.idling.clear()
            waker.cancel()
            gone.cancel()
        if client.has_pending_idle():
            client.idle_done()
        async with asyncio.timeout(30):
            await idle

    # --- comparing folders -----------------------------------------------------------

    async def sync_folders(
        self, session: UpstreamSession, up: UpstreamConfig, *, condstore: bool
    ) -> None:
        client = session.client
        response = await client.list('""', '"*"')
        if response.result != "OK":
            raise UpstreamError(f"LIST refused: {_answer(response).text}")
        folders = [(r, n) for r, n in parse_list(response.lines) if up.mirrors(n)]
        # INBOX first: it is what co-holders wait for.
        folders.sort(key=lambda f: (f[1] != "INBOX", f[1]))
        for remote, local in folders:
            link = await self.down.link(self.box, local, remote)
            await self.sync_folder(session, link, condstore=condstore)

    async def sync_folder(
        self, session: UpstreamSession, link: FolderLink, *, condstore: bool
    ) -> None:
        client = session.client
        response = await client.select(_quote(link.remote_name))
        if response.result != "OK":
            raise UpstreamError(f"SELECT {link.remote_name} refused: {_answer(response).text}")
        sel = parse_select(response.lines)
        self._compared[link.remote_name] = sel
        known = await self.down.known(link.folder_id)
        same = sel.uidvalidity == link.uidvalidity
        if (
            condstore
            and same
            and not link.resync
            and sel.highestmodseq
            and sel.highestmodseq == link.highestmodseq
            and sel.exists == len(known)
        ):
            return  # RFC 7162 §3.1.2.1: nothing changed since the last round
        remote = await self._remote_state(session, sel, link, condstore=condstore and same)
        plan = plan_folder(link.uidvalidity, known, remote)
        if plan.uidvalidity_changed:
            await self._rematch(session, link, sel)
            return
        if plan.expunged:
            await self.down.expunge(
                link.folder_id, [(k.local_uid, k.remote_uid) for k in plan.expunged]
            )
        if plan.flags:
            await self.down.apply_flags(
                link.folder_id,
                [(c.known.local_uid, c.known.remote_uid, c.flags) for c in plan.flags],
            )
        await self._download(session, link, sel.uidvalidity, plan.fetch)
        await self.down.folder_synced(
            link.folder_id,
            uidvalidity=sel.uidvalidity,
            highestmodseq=sel.highestmodseq,
            uidnext=sel.uidnext,
        )

    async def _remote_state(
        self, session: UpstreamSession, sel: Selected, link: FolderLink, *, condstore: bool
    ) -> RemoteFolder:
        client = session.client
        if sel.exists == 0:
            return RemoteFolder(sel.uidvalidity, frozenset(), {})
        found = await client.uid_search("ALL", charset=None)
        if found.result != "OK":
            raise UpstreamError(f"UID SEARCH refused: {_answer(found).text}")
        uids = sorted(search_uids(_answer(found)))
        # RFC 7162 §3.1.4.1: with CONDSTORE only the flags changed since the last round
        # (expunges show as UIDs missing from the search).
        partial = condstore and link.highestmodseq > 0 and not link.resync
        items = f"(UID FLAGS) (CHANGEDSINCE {link.highestmodseq})" if partial else "(UID FLAGS)"
        flags: dict[int, frozenset[str]] = {}
        for i in range(0, len(uids), FLAGS_BATCH_UIDS):
            response = await client.uid("fetch", uid_set(uids[i : i + FLAGS_BATCH_UIDS]), items)
            if response.result != "OK":
                raise UpstreamError(f"UID FETCH refused: {_answer(response).text}")
            flags.update({u: f for u, (_, f) in fetched_flags(_answer(response)).items()})
        if not partial:
            # a UID the search listed but the FETCH did not was expunged in between
            return RemoteFolder(sel.uidvalidity, frozenset(flags), flags)
        return RemoteFolder(sel.uidvalidity, frozenset(uids), flags, partial_flags=True)

    async def _download(
        self, session: UpstreamSession, link: FolderLink, uidvalidity: int, uids: Sequence[int]
    ) -> None:
        for i in range(0, len(uids), FETCH_BATCH_MESSAGES):
            batch = uids[i : i + FETCH_BATCH_MESSAGES]
            response = await asyncio.wait_for(
                session.client.protocol.fetch(
                    uid_set(batch),
                    "(UID FLAGS INTERNALDATE BODY.PEEK[])",
                    by_uid=True,
                    timeout=COMMAND_TIMEOUT_SECONDS,
                ),
                COMMAND_TIMEOUT_SECONDS,
            )
            if response.result != "OK":
                raise UpstreamError(f"UID FETCH refused: {_answer(response).text}")
            items = parse_fetched_bodies(response.lines)
            await self.down.add(link, uidvalidity, items)

    async def _rematch(self, session: UpstreamSession, link: FolderLink, sel: Selected) -> None:
        """RFC 3501 §2.3.1.1: the operator's UIDs of this folder changed meaning."""
        log.warning(
            "upstream.uidvalidity_changed",
            box=self.box,
            folder=link.name,
            old=link.uidvalidity,
            new=sel.uidvalidity,
        )
        remote: list[RemoteCopy] = []
        if sel.exists:
            found = await session.client.uid_search("ALL", charset=None)
            uids = sorted(search_uids(_answer(found)))
            for i in range(0, len(uids), FETCH_BATCH_MESSAGES):
                response = await session.client.uid(
                    "fetch",
                    uid_set(uids[i : i + FETCH_BATCH_MESSAGES]),
                    "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                )
                if response.result != "OK":
                    raise UpstreamError(f"UID FETCH refused: {_answer(response).text}")
                remote += parse_fetched_ids(response.lines)
        local = await self.down.local_copies(link.folder_id)
        result = rematch(local, remote)
        await self.down.rematched(
            link.folder_id,
            sel.uidvalidity,
            [(lc.local_uid, rc.remote_uid, rc.flags) for lc, rc in result.pairs],
            [lc.local_uid for lc in result.dropped],
        )
        fresh = FolderLink(
            link.folder_id, link.box, link.name, link.remote_name, sel.uidvalidity, 0, False
        )
        await self._download(session, fresh, sel.uidvalidity, result.fetch)
        await self.down.folder_synced(
            link.folder_id, uidvalidity=sel.uidvalidity, highestmodseq=0, uidnext=sel.uidnext
        )


async def _unless_lost(coro: Any, lost: asyncio.Event) -> Any:
    """`coro`'s result, or `_Lost` as soon as the connection drops (or after
    COMMAND_TIMEOUT_SECONDS)."""
    task = asyncio.ensure_future(coro)
    gone = asyncio.ensure_future(lost.wait())
    try:
        done, _ = await asyncio.wait(
            {task, gone}, timeout=COMMAND_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        gone.cancel()
    if task not in done:
        task.cancel()
        raise _Lost("connection lost" if lost.is_set() else "the operator stopped answering")
    return task.result()


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- every box ---------------------------------------------------------------------------


class UpstreamSync:
    """Starts a `BoxSync` for each box of the config with an upstream, stops them."""

    def __init__(
        self,
        store: Store,
        upstreams: Callable[[], dict[str, UpstreamConfig]],
        *,
        minimum_tls_version: Callable[[], str] = lambda: "1.2",
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.minimum_tls_version = minimum_tls_version
        self.boxes: dict[str, BoxSync] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        await self.apply()
        self.store.on_commit(self._on_commit)

    def _on_commit(self, folders: frozenset[int]) -> None:
        """A commit touched a mirrored folder outside the box's own round: a
        co-holder's change (journaled in that commit) to replay now, not at the next
        poll (the operator's IDLE is ended with DONE for it)."""
        for sync in self.boxes.values():
            if not sync.in_round and folders & sync.folder_ids:
                sync.wake()

    async def apply(self) -> None:
        """Start loops for boxes newly given an upstream; loops of boxes that lost it
        end by themselves (their `config()` turns None)."""
        wanted = self.upstreams()
        await MirrorStore(self.store).ensure_boxes(wanted)
        for box in wanted:
            task = self._tasks.get(box)
            if task is not None and not task.done():
                continue
            sync = BoxSync(
                self.store,
                box,
                lambda b=box: self.upstreams().get(b),  # type: ignore[misc]
                minimum_tls_version=self.minimum_tls_version,
            )
            self.boxes[box] = sync
            self._tasks[box] = asyncio.create_task(sync.run(), name=f"upstream-{box}")

    def wake(self, box: str) -> None:
        sync = self.boxes.get(box.lower())
        if sync is not None:
            sync.wake()

    async def stop(self) -> None:
        self.store.off_commit(self._on_commit)
        tasks, self._tasks = self._tasks, {}
        pending = set(tasks.values())
        while pending:
            for task in pending:
                task.cancel()
            # A loop that let a cancellation go (a library catching it) is asked again
            # rather than waited for without end.
            _, pending = await asyncio.wait(pending, timeout=STOP_RECANCEL_SECONDS)
            if pending:
                log.warning("upstream.stop_again", boxes=sorted(t.get_name() for t in pending))
        for task in tasks.values():
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("upstream.loop_failed", task=task.get_name(), error=repr(exc))
