"""What changes in a session that ran ``ENABLE IMAP4rev2`` (RFC 9051), pure.

The server advertises IMAP4rev1 and IMAP4rev2 side by side (RFC 9051 Appendix A): a
session behaves as IMAP4rev1 until the client sends ``ENABLE IMAP4rev2`` (§6.3.1),
and from then on as IMAP4rev2 for the rest of the connection:

* mailbox names are UTF-8 on the wire (§5.1), not modified UTF-7: the client's names
  are turned into the stored (modified UTF-7) form on the way in (`internal_names`),
  and back to UTF-8 on the way out (`wire_name`); before ENABLE no UTF-8 quoted
  string is ever sent (Appendix A);
* ``\\Recent`` does not exist (Appendix E item 12): no ``RECENT`` response, no
  ``\\Recent`` in FETCH FLAGS, and ``STATUS RECENT`` or ``SEARCH RECENT/NEW/OLD``
  are not in the grammar (§9: ``status-att``, ``search-key``), so they are refused;
* SEARCH answers with ``ESEARCH`` (§6.4.4, §7.3.4; item 4), ``RETURN (ALL)`` when
  the client gave no RETURN;
* a new mailbox name the client sent in another form than NFC is created in NFC,
  and the client is told with ``LIST ... ("OLDNAME" (...))`` (`oldname`);
* SELECT/EXAMINE also send the mailbox's ``LIST`` (§6.3.2; item 10) and, when they
  replace a selected mailbox, ``OK [CLOSED]`` first (§6.3.2, §7.1; item 9).

The extensions IMAP4rev2 folds in (Appendix E item 2) are served the same to both
kinds of session, and ``STATUS DELETED`` (§6.3.11) is answered to either.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Final, TypeVar

from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.parser import decode_mailbox_name
from relay.imap.response import encode_mailbox_name

CAPABILITY: Final = "IMAP4rev2"
ENABLED: Final = "IMAP4REV2"  # as `Session.enabled` holds it (capability names are upper-cased)
RECENT_FLAG: Final = "\\Recent"

C = TypeVar("C", bound=c.Command)

# The command fields that hold one mailbox name, and the one holding several.
_NAME_FIELDS: Final = ("mailbox", "source", "destination", "reference", "pattern")


def internal_name(name: str) -> str:
    """A UTF-8 mailbox name (or LIST pattern) sent by an IMAP4rev2 client, in the form
    the store keeps (modified UTF-7, RFC 3501 §5.1.3). The name is first put in NFC
    (RFC 9051 §5.1: Net-Unicode, RFC 5198), so ``é`` names one folder however typed."""
    return encode_mailbox_name(unicodedata.normalize("NFC", name))


def wire_name(name: str) -> str:
    """A stored (modified UTF-7) mailbox name as an IMAP4rev2 client sees it: UTF-8.
    A name that is not valid modified UTF-7 is sent as it is stored."""
    decoded = decode_mailbox_name(name)
    return name if decoded is None else decoded


def internal_names(cmd: C) -> C:
    """`cmd` with every mailbox name and LIST pattern in the stored form (`internal_name`)."""
    changes: dict[str, object] = {}
    for f in dataclasses.fields(cmd):
        value = getattr(cmd, f.name)
        if f.name in _NAME_FIELDS and isinstance(value, str):
            changes[f.name] = internal_name(value)
        elif f.name == "patterns" and isinstance(value, tuple):
            changes[f.name] = tuple(internal_name(p) for p in value)
    if isinstance(cmd, c.Notify) and cmd.groups is not None:
        changes["groups"] = tuple(
            dataclasses.replace(g, mailboxes=tuple(internal_name(m) for m in g.mailboxes))
            for g in cmd.groups
        )
    return dataclasses.replace(cmd, **changes) if changes else cmd  # type: ignore[arg-type]


def oldname(cmd: c.Command) -> bytes | None:
    """The ``LIST`` with ``OLDNAME`` that tells an IMAP4rev2 client its new mailbox
    name was put in NFC (RFC 9051 §6.3.4, §6.3.6, §6.3.12 SHOULD; §6.3.9.7), for a
    CREATE, RENAME or APPEND that succeeded with the client's name as sent; None when
    the name was already normalised."""
    if isinstance(cmd, c.Rename):
        sent = cmd.destination
    elif isinstance(cmd, c.Create | c.Append | c.AppendMany):
        sent = cmd.mailbox
    else:
        return None
    if isinstance(cmd, c.Create):
        sent = sent.rstrip("/")  # §6.3.4: the name created has no trailing delimiter
    normal = unicodedata.normalize("NFC", sent)
    if normal == sent:
        return None
    new, old = r.string(normal, utf8=True), r.string(sent, utf8=True)
    return r.untagged(b'LIST () "/" ' + new + b' ("OLDNAME" (' + old + b"))")


def uses_recent(key: c.SearchKey) -> bool:
    """Whether search criteria test ``\\Recent`` (``RECENT``, ``NEW``, ``OLD``), which
    RFC 9051 removed from ``search-key``."""
    if isinstance(key, c.SearchFlag):
        return key.flag.lower() == RECENT_FLAG.lower()
    if isinstance(key, c.SearchAnd):
        return any(uses_recent(k) for k in key.keys)
    if isinstance(key, c.SearchOr):
        return uses_recent(key.left) or uses_recent(key.right)
    if isinstance(key, c.SearchNot):
        return uses_recent(key.key)
    return False


__all__ = [
    "CAPABILITY",
    "ENABLED",
    "internal_name",
    "internal_names",
    "oldname",
    "uses_recent",
    "wire_name",
]
