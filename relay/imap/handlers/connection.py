"""Commands valid in any state and the session-level ones (RFC 3501 §6.1, §6.2.1,
§6.3): CAPABILITY, NOOP, LOGOUT, ID (RFC 2971), STARTTLS, ENABLE (RFC 5161),
NAMESPACE (RFC 2342), IDLE (RFC 2177).
"""

from __future__ import annotations

import asyncio

from relay.imap import commands as c
from relay.imap import names, rev2
from relay.imap import response as r
from relay.imap.handlers.common import ClientBug, Result, capabilities, view
from relay.imap.parser import is_idle_done
from relay.imap.session import Closing, Session
from relay.imap.state import Event

# --------------------------------------------------------------- any state (§6.1)


async def h_capability(s: Session, cmd: c.Capability) -> Result:
    s.emit(r.untagged("CAPABILITY " + " ".join(capabilities(s))))
    return "CAPABILITY completed", None


async def h_noop(s: Session, cmd: c.Noop | c.Check) -> Result:
    return f"{cmd.name} completed", None


async def h_logout(s: Session, cmd: c.Logout) -> Result:
    s.emit(r.untagged_status(r.Status.BYE, "mss-relay logging out"))
    s.emit(r.tagged(cmd.tag, r.Status.OK, "LOGOUT completed"))
    s.deselect()
    s.move(Event.LOGOUT)
    return None


async def h_id(s: Session, cmd: c.Id) -> Result:
    # RFC 2971: the server's identification; no version (it only helps attackers).
    s.emit(r.untagged(b'ID ("name" "mss-relay" "vendor" "mss-relay")'))
    return "ID completed", None


# ------------------------------------------------------------ not authenticated (§6.2)


async def h_starttls(s: Session, cmd: c.StartTls) -> Result:
    if s.tls_active or s.service.tls_context is None:
        raise ClientBug("TLS is already active or not offered here")
    s.emit(r.tagged(cmd.tag, r.Status.OK, "Begin TLS negotiation now"))
    await s.flush()
    # Plaintext pipelined after STARTTLS must not run as if it came over TLS.
    s.reader.discard_buffered()
    await s.writer.start_tls(s.service.tls_context)
    s.tls_active = True
    return None


# -------------------------------------------------------------- authenticated (§6.3)


# RFC 5161 / RFC 9051 §6.3.1: what ENABLE can turn on. QRESYNC implies CONDSTORE
# (RFC 7162 §3.2.3); IMAP4rev2 turns the session into an IMAP4rev2 one
# (`relay.imap.rev2`).
ENABLABLE = {
    "CONDSTORE": ("CONDSTORE",),
    "QRESYNC": ("QRESYNC", "CONDSTORE"),
    rev2.ENABLED: (rev2.ENABLED,),
}
# How ENABLED names them (capability names are case-insensitive, RFC 9051 §7.2.2;
# clients compare them so, but the registered spelling is the polite answer).
SPELLING = {rev2.ENABLED: rev2.CAPABILITY}


async def h_enable(s: Session, cmd: c.Enable) -> Result:
    # §6.3.1: unknown names are ignored; the ENABLED response names only what this
    # command enabled (and is sent even when that is nothing).
    newly = [x for x in dict.fromkeys(cmd.capabilities) if x in ENABLABLE and x not in s.enabled]
    for x in newly:
        s.enabled.update(ENABLABLE[x])
    if rev2.ENABLED in newly and s.selected is not None:
        # Clients MUST NOT ENABLE with a mailbox selected, servers need not check
        # (§6.3.1): should one, \Recent stops showing from now on.
        s.selected.show_recent = False
    s.emit(r.untagged("ENABLED" + "".join(" " + SPELLING.get(x, x) for x in newly)))
    return "ENABLE completed", None


async def h_namespace(s: Session, cmd: c.Namespace) -> Result:
    v = view(s)
    personal = b'(("" "/"))' if v.personal else b"NIL"
    shared = b'(("' + names.SHARED_PREFIX.encode() + b'" "/"))' if v.shared else b"NIL"
    s.emit(r.untagged(b"NAMESPACE " + personal + b" " + shared + b" NIL"))
    return "NAMESPACE completed", None


async def h_idle(s: Session, cmd: c.Idle) -> Result:
    """RFC 2177: push EXISTS / EXPUNGE / FETCH as they happen until ``DONE``."""
    s.emit(r.continuation("idling"))
    await s.refresh(allow_expunge=True)
    timeout = float(s.runtime.config.limits.imap_idle_timeout_seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        line = s.reader.read_line()
        if line is not None:
            if isinstance(line, bytes) and is_idle_done(line):
                s.emit(r.tagged(cmd.tag, r.Status.OK, "IDLE terminated"))
                return None
            s.emit(r.tagged(cmd.tag, r.Status.BAD, "Expected DONE"))
            s._count_bad()
            return None
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        data = await s.receive(remaining, wake_on_notify=True)
        if data is None:
            raise Closing
        if data:
            s.reader.feed(data)
        await s.refresh(allow_expunge=True)
