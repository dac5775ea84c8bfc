"""The outbound queue worker: claim due recipients, deliver them over verified mutual
TLS, record each outcome, send delivery status notifications, free what is done.

One round (`DeliveryWorker.run_once`):

1. claim due rows (`relay.store.queue`: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
   several nodes share the queue; SQLite has this one worker);
2. route each recipient (`relay.delivery.routing`), group by connection (host, port,
   expected peer) and, inside a group, by message: one mail transaction per message
   with all its recipients there, several messages per connection
   (``delivery_messages_per_connection``), ``delivery_concurrency`` connections at once;
3. per recipient: 2xx → delivered; 4xx, a connection, TLS or identity failure →
   deferred until `relay.delivery.schedule.next_attempt` (bounced once the queue
   lifetime is over); 5xx → bounced. Each outcome is committed with its audit event
   right after its transaction (a message all delivered leaves the queue in that same
   commit), so a crash re-sends at most the messages in flight;
   Mail sent as a box hosted at an MSSanté operator (gateway mode) is grouped per box
   and goes to the operator's submission service with the box's credential
   (`relay.delivery.routing.operator_route`), whatever its recipients' domains;
4. for each message whose recipients are all final with some bounced: one failure
   DSN (RFC 3464) listing every bounced recipient, to the sender's box when it is
   ours (into its INBOX through `Store.accept`) or queued with a null reverse-path
   otherwise; never for a null sender. The DSN and the removal of the message's rows
   (and of its body if no box holds it) commit together: never lost, never twice. A
   deferred message gets one "delayed" DSN after ``delay_warning_seconds``.

Time comes from `Runtime.clock`, so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import secrets
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from relay.audit.events import (
    AuditEvent,
    DeliveryBounced,
    DeliveryDeferred,
    DeliveryDelivered,
    DeliveryReportQueued,
)
from relay.delivery.client import (
    DeliveryFailure,
    PeerConnection,
    Reply,
    SubmissionAuth,
    mx_hosts,
)
from relay.delivery.dsn import DsnKind, FailedRecipient, build_dsn
from relay.delivery.routing import (
    Destination,
    OperatorSubmission,
    Unroutable,
    operator_route,
    recipient_domain,
    route_for,
)
from relay.delivery.schedule import RetryPolicy, expires_at, next_attempt, should_warn_delay
from relay.errors import StoreError
from relay.message.analysis import analyse
from relay.runtime import Runtime
from relay.store.queue import Outcome, QueueItem, QueueStore
from relay.store.store import Acceptance, Store, Unit
from relay.tls.context import TlsError, client_context
from relay.upstream.connection import CredentialsRefused, read_password

if TYPE_CHECKING:
    from relay.config.model import Route, UpstreamConfig

__all__ = ["ClientContexts", "DeliveryWorker", "resolve_recipient"]

log = structlog.get_logger("relay.delivery")

MAX_MX_HOSTS = 5  # hosts tried per connection attempt (Postfix smtp_mx_address_limit)
FINISH_BATCH = 100
_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")
_SMTP_REPLY = re.compile(r"[245]\d\d(?: |$)")


class ClientContexts(Protocol):
    """Where the worker gets its TLS client context (`relay.delivery.crl.CrlRefresher`)."""

    def client_context(self, *, check_hostname: bool) -> ssl.SSLContext: ...


async def resolve_recipient(
    store: Store, routes: Sequence[Route], address: str
) -> Destination | Unroutable:
    """Route one remote recipient: its domain's trust-space entry, then `route_for`."""
    domain = recipient_domain(address)
    listing = await store.trust_space_lookup(domain) if domain is not None else None
    return route_for(domain, routes, listing)


async def _read_password(up: UpstreamConfig) -> str | None:
    """The box's password at its operator, read at each connection (it can be rotated
    without a reload; the same reader as the IMAP side). None: certificate login."""
    try:
        return await asyncio.to_thread(read_password, up)
    except CredentialsRefused as exc:
        raise DeliveryFailure(str(exc), status="4.7.0") from None


def _diagnostic(last_reply: str | None) -> str | None:
    """RFC 3464 §2.3.6 Diagnostic-Code: a peer's reply is of type "smtp"; our own
    reasons (TLS, connection, expiry, operator) get a private "X-" type."""
    if not last_reply:
        return None
    if _SMTP_REPLY.match(last_reply):
        return f"smtp; {last_reply}"
    return f"X-mss-relay; {last_reply}"


def _dsn_status(kind: DsnKind, last_reply: str | None) -> str:
    """The RFC 3463 status a DSN reports: the first one in the stored reply or reason
    ("550 5.1.1 ...", "4.7.5 TLS ..."), else the class's generic one."""
    m = _ENHANCED.search(last_reply or "")
    status = m.group(0) if m else ""
    if kind == "delay":  # RFC 3464 §2.3.4: "delayed" is a transient condition
        return status if status.startswith("4.") else "4.0.0"
    return status if status[:2] in ("4.", "5.") else "5.0.0"


class DeliveryWorker:
    """Delivers the outbound queue until stopped."""

    def __init__(self, runtime: Runtime, contexts: ClientContexts) -> None:
        self.runtime = runtime
        self.contexts = contexts
        self.queue = QueueStore(runtime.store)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.connections_opened = 0
        self._deferred: set[str] = set()  # queue ids deferred this round (delay DSN)
        # Gateway mode: box -> (its upstream config, the TLS context built from it).
        self._operator_contexts: dict[str, tuple[UpstreamConfig, str, ssl.SSLContext]] = {}

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self.runtime.store.dialect == "sqlite":
            # One worker per SQLite database: rows left "sending" were cut by a crash.
            released = await self.queue.release_in_flight(self.runtime.clock())
            if released:
                log.warning("delivery.released_in_flight", rows=released)
        self._task = asyncio.create_task(self._loop(), name="delivery-worker")

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming; let deliveries in flight end within the grace period. Rows
        cut short stay claimed and are retried (next start on SQLite, lease end else)."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_seconds)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Look at the queue now (new mail, an operator's retry, a test moving time)."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            handled = 0
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("delivery.round_failed")
            if handled or self._stopping:
                continue
            poll = self.runtime.config.limits.queue_poll_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)

    # --- one round --------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim and deliver what is due, then finish completed messages. Returns the
        number of recipients attempted."""
        self.rounds += 1
        limits = self.runtime.config.limits
        now = self.runtime.clock()
        due = await self.queue.next_due()
        items: list[QueueItem] = []
        if due is not None and due <= now:
            lease = dt.timedelta(seconds=limits.delivery_lease_seconds)
            items = await self.queue.claim(now, now + lease, limits.delivery_batch_recipients)
            if items:
                await self._deliver(items)
        await self._finish()
        return len(items)

    async def _deliver(self, items: Sequence[QueueItem]) -> None:
        config = self.runtime.config
        groups: dict[
            tuple[str, int, str | None], tuple[Destination | OperatorSubmission, list[QueueItem]]
        ] = {}
        routes: dict[str, Destination | Unroutable] = {}
        unroutable: list[Outcome] = []
        for item in items:
            via_operator = operator_route(config.mailbox(item.box) if item.box else None)
            if isinstance(via_operator, Unroutable):
                reason = via_operator.reply.removeprefix("550 5.7.1 ")
                unroutable.append(self._defer(item, f"4.3.5 {reason}", peer=None))
                continue
            if via_operator is not None:
                groups.setdefault(via_operator.connection_key, (via_operator, []))[1].append(item)
                continue
            domain = recipient_domain(item.recipient) or ""
            route = routes.get(domain)
            if route is None:
                route = await resolve_recipient(self.runtime.store, config.routes, item.recipient)
                routes[domain] = route
            if isinstance(route, Unroutable):
                # The config or the trust space changed since acceptance: retry (an admin
                # may fix it); the queue lifetime bounds this.
                reason = route.reply.removeprefix("550 5.1.2 ")
                unroutable.append(self._defer(item, f"4.4.4 {reason}", peer=None))
                continue
            groups.setdefault(route.connection_key, (route, []))[1].append(item)
        if unroutable:
            await self._record(unroutable)
        limits = config.limits
        semaphore = asyncio.Semaphore(limits.delivery_concurrency)
        async with asyncio.TaskGroup() as tg:
            for dest, group in groups.values():
                messages: dict[str, list[QueueItem]] = {}
                for item in group:
                    messages.setdefault(item.queue_id, []).append(item)
                batch = list(messages.values())
                # Spread a large group over the connections allowed, each carrying at
                # most delivery_messages_per_connection messages.
                spread = -(-len(batch) // limits.delivery_concurrency)
                per_connection = max(1, min(limits.delivery_messages_per_connection, spread))
                for start in range(0, len(batch), per_connection):
                    chunk = batch[start : start + per_connection]
                    tg.create_task(self._guarded_chunk(dest, chunk, semaphore))
        deferred, self._deferred = self._deferred, set()
        for queue_id in sorted(deferred):
            await self._maybe_warn_delay(queue_id)

    async def _guarded_chunk(
        self,
        dest: Destination | OperatorSubmission,
        chunk: list[list[QueueItem]],
        semaphore: asyncio.Semaphore,
    ) -> None:
        done: set[int] = set()
        try:
            async with semaphore:
                await self._deliver_chunk(dest, chunk, done)
        except Exception:
            ref = secrets.token_hex(6)
            log.exception("delivery.chunk_failed", ref=ref, via=dest.via)
            left = [i for msg in chunk for i in msg if i.id not in done]
            if left:
                reason = f"4.3.0 local error in delivery (reference {ref})"
                await self._record([self._defer(i, reason, peer=None) for i in left])

    async def _deliver_chunk(
        self,
        dest: Destination | OperatorSubmission,
        chunk: list[list[QueueItem]],
        done: set[int],
    ) -> None:
        """One connection: open and verify it, then one transaction per message."""
        everything = [i for msg in chunk for i in msg]
        try:
            if isinstance(dest, OperatorSubmission):
                conn = await self._connect_operator(dest)
            else:
                conn = await self._connect_mta(dest)
        except DeliveryFailure as failure:
            await self._fail(everything, failure, None, done)
            return
        # While one message is on the wire, the next body is read from the store and the
        # previous outcome is committed: the connection does not wait for the disk.
        records: list[asyncio.Task[None]] = []
        next_body = asyncio.create_task(self._body(chunk[0][0]))
        try:
            for index, message in enumerate(chunk):
                data = await next_body
                if index + 1 < len(chunk):
                    next_body = asyncio.create_task(self._body(chunk[index + 1][0]))
                if data is None:
                    unreadable = DeliveryFailure(
                        "message body unreadable in the store", status="4.3.0"
                    )
                    await self._fail(message, unreadable, conn, done)
                    continue
                recipients = [i.recipient for i in message]
                try:
                    replies = await conn.send(message[0].sender, recipients, data)
                except DeliveryFailure as broken:
                    rest = [i for msg in chunk[index:] for i in msg]
                    await self._fail(rest, broken, conn, done)
                    return
                outcomes = [self._decide(i, replies[i.recipient], conn) for i in message]
                records.append(asyncio.create_task(self._record_done(outcomes, done)))
        finally:
            if not next_body.done():
                next_body.cancel()
            await conn.close()
            # Outcomes not committed make the guard defer those rows (sent again later).
            await asyncio.gather(*records)

    async def _body(self, item: QueueItem) -> bytes | None:
        try:
            return await self.runtime.store.read_blob(item.blob_id)
        except StoreError:
            log.error("delivery.body_unreadable", queue_id=item.queue_id, blob=item.blob_id)
            return None

    async def _record_done(self, outcomes: Sequence[Outcome], done: set[int]) -> None:
        await self._record(outcomes)
        done.update(o.item.id for o in outcomes)

    async def _connect(
        self, hosts: Sequence[str], dest: Destination, context: ssl.SSLContext
    ) -> PeerConnection:
        limits = self.runtime.config.limits
        failure: DeliveryFailure | None = None
        for host in hosts:
            try:
                conn = await PeerConnection.open(
                    host=host,
                    port=dest.port,
                    context=context,
                    expected_dn=dest.expected_dn,
                    local_hostname=self.runtime.config.server.hostname,
                    connect_timeout=limits.delivery_connect_timeout_seconds,
                    command_timeout=limits.delivery_command_timeout_seconds,
                )
            except DeliveryFailure as exc:
                log.warning("delivery.connect_failed", host=host, port=dest.port, reason=exc.reason)
                failure = exc
                continue
            self.connections_opened += 1
            return conn
        raise failure or DeliveryFailure(f"no host to connect to for {dest.domain}", status="4.4.4")

    async def _connect_mta(self, dest: Destination) -> PeerConnection:
        """The recipients' operator (or the route's relay): verified mutual TLS."""
        limits = self.runtime.config.limits
        if dest.host is not None:
            hosts = [dest.host]
        else:
            hosts = await mx_hosts(
                dest.domain, lifetime_seconds=limits.delivery_connect_timeout_seconds
            )
        try:
            context = self.contexts.client_context(check_hostname=dest.expected_dn is None)
        except TlsError as exc:
            raise DeliveryFailure(f"no TLS client context: {exc}", status="4.7.5") from None
        return await self._connect(hosts[:MAX_MX_HOSTS], dest, context)

    async def _connect_operator(self, dest: OperatorSubmission) -> PeerConnection:
        """The operator's submission service for `dest.box`: TLS verified against the
        box's trust anchors and the endpoint's host name (RFC 6125), then AUTH with the
        box's credential. Nothing is sent before both succeed."""
        config = self.runtime.config
        limits = config.limits
        box = config.mailbox(dest.box)
        assert box is not None and box.upstream is not None  # operator_route checked
        up = box.upstream
        try:
            context = self._operator_context(dest.box, up, config.tls.minimum_version)
        except TlsError as exc:
            raise DeliveryFailure(
                f"no TLS context for the operator of {dest.box}: {exc}", status="4.7.5"
            ) from None
        auth = SubmissionAuth(login=up.login, password=await _read_password(up))
        try:
            conn = await PeerConnection.open(
                host=dest.host,
                port=dest.port,
                context=context,
                expected_dn=None,  # the host name is checked in the handshake
                local_hostname=config.server.hostname,
                connect_timeout=limits.delivery_connect_timeout_seconds,
                command_timeout=limits.delivery_command_timeout_seconds,
                implicit_tls=dest.implicit_tls,
                auth=auth,
            )
        except DeliveryFailure as exc:
            log.warning("delivery.operator_failed", box=dest.box, via=dest.via, reason=exc.reason)
            raise
        self.connections_opened += 1
        return conn

    def _operator_context(self, box: str, up: UpstreamConfig, minimum: str) -> ssl.SSLContext:
        """Built once per box and kept until a reload changes its upstream table."""
        cached = self._operator_contexts.get(box)
        if cached is not None and cached[0] == up and cached[1] == minimum:
            return cached[2]
        context = client_context(up.tls_config(minimum))
        self._operator_contexts[box] = (up, minimum, context)
        return context

    # --- outcomes ---------------------------------------------------------------------

    async def _record(self, outcomes: Sequence[Outcome]) -> None:
        await self.queue.record(outcomes)
        self._deferred.update(o.item.queue_id for o in outcomes if o.status == "deferred")

    def _policy(self) -> RetryPolicy:
        return RetryPolicy.from_limits(self.runtime.config.limits)

    def _decide(self, item: QueueItem, reply: Reply, conn: PeerConnection) -> Outcome:
        peer = conn.address
        subject = conn.peer.subject if conn.peer else None
        if reply.success:
            return self._final(item, "delivered", str(reply), peer, subject)
        if reply.permanent:
            return self._final(item, "bounced", str(reply), peer, subject)
        return self._defer(item, str(reply), peer=peer, subject=subject)

    async def _fail(
        self,
        items: Sequence[QueueItem],
        failure: DeliveryFailure,
        conn: PeerConnection | None,
        done: set[int],
    ) -> None:
        reason = f"{failure.status} {failure.reason}"
        peer = conn.address if conn is not None else None
        subject = conn.peer.subject if conn is not None and conn.peer else None
        if failure.permanent:
            outcomes = [self._final(i, "bounced", reason, peer, subject) for i in items]
        else:
            outcomes = [self._defer(i, reason, peer=peer, subject=subject) for i in items]
        log.warning("delivery.failed", reason=reason, recipients=len(items))
        await self._record(outcomes)
        done.update(i.id for i in items)

    def _final(
        self,
        item: QueueItem,
        status: Literal["delivered", "bounced"],
        reply: str,
        peer: str | None,
        subject: str | None,
    ) -> Outcome:
        now = self.runtime.clock()
        common: dict[str, Any] = {
            "person": item.person,
            "box": item.box,
            "peer": peer,
            "request": f"MAIL FROM:<{item.sender}> RCPT TO:<{item.recipient}>",
            "answer": reply,
            "queue_id": item.queue_id,
            "recipient": item.recipient,
            "sender": item.sender,
            "message_id": item.message_id,
            "attempts": item.attempts,
            "certificate_subject": subject,
        }
        event: AuditEvent
        if status == "delivered":
            event = DeliveryDelivered(**common)
            log.info("delivery.delivered", queue_id=item.queue_id, peer=peer)
        else:
            event = DeliveryBounced(**common, reason=reply)
            log.info("delivery.bounced", queue_id=item.queue_id, peer=peer, reason=reply)
        return Outcome(item, status, reply, now, event)

    def _defer(
        self, item: QueueItem, reason: str, *, peer: str | None, subject: str | None = None
    ) -> Outcome:
        now = self.runtime.clock()
        retry = next_attempt(
            self._policy(), attempts=max(item.attempts, 1), first_queued=item.created_at, now=now
        )
        if retry is None:
            expired = f"4.4.7 delivery time expired after {item.attempts} attempts; last: {reason}"
            return self._final(item, "bounced", expired, peer, subject)
        event = DeliveryDeferred(
            person=item.person,
            box=item.box,
            peer=peer,
            request=f"MAIL FROM:<{item.sender}> RCPT TO:<{item.recipient}>",
            answer=reason,
            queue_id=item.queue_id,
            recipient=item.recipient,
            sender=item.sender,
            message_id=item.message_id,
            attempts=item.attempts,
            reason=reason,
            next_attempt=retry.isoformat(),
            certificate_subject=subject,
        )
        return Outcome(item, "deferred", reason, retry, event)

    # --- DSN and removal --------------------------------------------------------------

    async def _finish(self) -> None:
        """Messages whose recipients are all final: DSN if any bounced, and removal, in
        one commit (so a crash can neither lose the DSN nor send it twice)."""
        limits = self.runtime.config.limits
        now = self.runtime.clock()
        lease = dt.timedelta(seconds=limits.delivery_lease_seconds)
        for queue_id in await self.queue.finishable(now, FINISH_BATCH):
            rows = await self.queue.claim_finish(queue_id, now, now + lease)
            if rows is None:
                continue  # another node is finishing it
            bounced = [r for r in rows if r.status == "bounced"]
            removal = self.queue.removal(queue_id)
            if not (
                bounced and rows[0].sender and await self._send_dsn("failure", bounced, removal)
            ):
                await self.queue.remove_message(queue_id)

    async def _maybe_warn_delay(self, queue_id: str) -> None:
        rows = await self.queue.rows_of(queue_id)
        waiting = [r for r in rows if r.status in ("queued", "deferred") and not r.delay_warned]
        if not waiting or not waiting[0].sender:
            return
        now = self.runtime.clock()
        policy = self._policy()
        if not should_warn_delay(policy, waiting[0].created_at, now, warned=False):
            return
        ids = [r.id for r in waiting]
        if not await self._send_dsn("delay", waiting, self.queue.marking_delay_warned(ids)):
            await self.queue.mark_delay_warned(ids)  # none can be sent: do not retry

    async def _send_dsn(
        self, kind: DsnKind, rows: Sequence[QueueItem], with_it: Unit[None]
    ) -> bool:
        """One DSN for one message listing `rows` (RFC 3464), committed together with
        `with_it`. False when no DSN can be made (then nothing was done)."""
        config = self.runtime.config
        first = rows[0]
        hostname = config.server.hostname
        policy = self._policy()
        now = self.runtime.clock()
        try:
            original = await self.runtime.store.read_blob(first.blob_id)
        except StoreError:
            original = b""
        failed = [
            FailedRecipient(
                recipient=r.recipient,
                status=_dsn_status(kind, r.last_reply),
                action="failed" if kind == "failure" else "delayed",
                diagnostic_code=_diagnostic(r.last_reply),
                last_attempt=r.last_attempt_at,
                will_retry_until=(expires_at(policy, r.created_at) if kind == "delay" else None),
            )
            for r in rows
        ]
        try:
            dsn = build_dsn(
                reporting_mta=hostname,
                original_envelope_id=None,
                original_sender=first.sender,
                arrival_date=first.created_at,
                failed=failed,
                original_headers=original,
                kind=kind,
                now=now,
                message_id_domain=hostname,
            )
        except ValueError as exc:
            log.error("delivery.dsn_impossible", queue_id=first.queue_id, error=str(exc))
            return False
        sender = first.sender.lower()
        domain = sender.rpartition("@")[2]
        local = domain in config.server.local_domains and config.mailbox(sender) is not None
        if domain in config.server.local_domains and not local:
            log.warning("delivery.dsn_dropped", queue_id=first.queue_id, reason="no such box")
            return False
        recipients = tuple(r.recipient for r in rows)

        def event(dsn_queue_id: str) -> AuditEvent:
            return DeliveryReportQueued(
                person=first.person,
                box=sender if local else first.box,
                queue_id=first.queue_id,
                dsn_queue_id=dsn_queue_id,
                kind=kind,
                to=sender,
                recipients=recipients,
                local=local,
            )

        await self.runtime.store.accept(
            Acceptance(
                raw=dsn,
                meta=analyse(dsn).to_json(),
                sender="",  # RFC 3464 §2 / RFC 5321 §4.5.5: a DSN has a null reverse-path
                local_recipients=(sender,) if local else (),
                remote_recipients=() if local else (first.sender,),
                message_id=analyse(dsn).message_id,
                audit=event,
                box=sender if local else None,
                in_same_transaction=with_it,
            )
        )
        log.info("delivery.dsn", kind=kind, queue_id=first.queue_id, to=sender, local=local)
        return True
