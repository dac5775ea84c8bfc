"""ACL commands (RFC 4314): rights come from the config, so SETACL and DELETEACL are
refused.
"""

from __future__ import annotations

from relay.imap import acl
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.handlers.common import Cannot, Result, need, rights, target_of, today
from relay.imap.session import Session

# ----------------------------------------------------------------------- ACL (RFC 4314)


async def h_myrights(s: Session, cmd: c.MyRights) -> Result:
    target = target_of(s, cmd.mailbox)
    s.emit(
        r.untagged(
            b"MYRIGHTS "
            + s.mailbox(cmd.mailbox)
            + b" "
            + acl.with_obsolete(rights(s, target)).encode()
        )
    )
    return "MYRIGHTS completed", None


async def h_getacl(s: Session, cmd: c.GetAcl) -> Result:
    target = target_of(s, cmd.mailbox)
    need(s, target, "a", "read the access list")
    box = s.runtime.config.mailbox(target.box)
    assert box is not None
    entries = acl.acl_entries(box, target.folder, today(s))
    body = b"".join(b" " + r.astring(i) + b" " + x.encode() for i, x in entries)
    s.emit(r.untagged(b"ACL " + s.mailbox(cmd.mailbox) + body))
    return "GETACL completed", None


async def h_listrights(s: Session, cmd: c.ListRights) -> Result:
    target = target_of(s, cmd.mailbox)
    need(s, target, "a", "read the access list")
    groups = " ".join(acl.RIGHT_GROUPS)
    s.emit(
        r.untagged(
            b"LISTRIGHTS "
            + s.mailbox(cmd.mailbox)
            + b" "
            + r.astring(cmd.identifier)
            + b' "" '
            + groups.encode()
        )
    )
    return "LISTRIGHTS completed", None


async def h_setacl(s: Session, cmd: c.SetAcl | c.DeleteAcl) -> Result:
    raise Cannot(
        "Rights are managed in the mss-relay configuration file, not over IMAP: "
        "ask the administrator"
    )
