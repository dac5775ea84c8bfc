"""Config rights → RFC 4314 ACL rights, pure.

The config file is the only source of rights (DESIGN.md): IMAP shows them through
MYRIGHTS / GETACL / LISTRIGHTS and refuses SETACL / DELETEACL. Mapping (issue 4):

    read   → l r s   lookup, read (SELECT, FETCH, SEARCH, COPY from), keep \\Seen
    flag   → w       write flags other than \\Seen and \\Deleted
    delete → t e     set \\Deleted, EXPUNGE
    send   → i p     insert (APPEND, COPY into) and post — only on Sent and Drafts
             + t e   on Drafts also delete and expunge (issue 9, item 11): Drafts is the
                     composer's scratch space; a client replaces a draft on each
                     auto-save (APPEND the new one, STORE \\Deleted + UID EXPUNGE the old)
    manage → k x a   create / delete / rename folders, administer (GETACL)

Sent and Drafts are the folders with the RFC 6154 special-use attributes ``\\Sent``
and ``\\Drafts`` when the caller knows the folder's attributes (the selected folder);
otherwise the folders every box is created with under those names.

The owner of a box holds every right. RFC 4314 §2.1.1: servers that implement the
``RIGHTS=kxte`` split still report the obsolete RFC 2086 ``c`` (create: k or x) and
``d`` (delete: t or e) rights so that older clients understand MYRIGHTS.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from relay.config.model import Mailbox, Right

# RFC 4314 §2.1: the canonical order of the standard rights.
ORDER: Final = "lrswipkxtea"
# Folders into which `send` lets a co-holder insert (APPEND, COPY): a sent copy or a draft,
# by special-use attribute (RFC 6154) and by the names every box is created with.
SEND_SPECIAL_USES: Final = frozenset({"\\Sent", "\\Drafts"})
SEND_FOLDERS: Final = frozenset({"Sent", "Drafts"})
DRAFTS_SPECIAL_USE: Final = "\\Drafts"
DRAFTS_FOLDER: Final = "Drafts"
# `letters(..., special_use=UNKNOWN)`: the caller does not know the folder's attributes.
UNKNOWN: Final = "?"

_LETTERS: Final[dict[Right, str]] = {
    Right.READ: "lrs",
    Right.FLAG: "w",
    Right.DELETE: "te",
    Right.SEND: "ip",
    Right.MANAGE: "kxa",
}

# LISTRIGHTS (RFC 4314 §3.4): rights that are always granted together, one group per
# config right. Nothing is granted unconditionally, hence the empty required set.
RIGHT_GROUPS: Final = ("lrs", "w", "te", "ip", "kxa")


def letters(rights: frozenset[Right], folder: str, special_use: str | None = UNKNOWN) -> str:
    """The RFC 4314 rights a set of config rights gives on `folder` of a box.

    `special_use`: the folder's RFC 6154 attribute if known (None: it has none);
    UNKNOWN: judge by the name (the default folders' names).
    """
    if special_use == UNKNOWN:
        sending = folder in SEND_FOLDERS
        drafts = folder == DRAFTS_FOLDER
    else:
        sending = special_use in SEND_SPECIAL_USES
        drafts = special_use == DRAFTS_SPECIAL_USE
    out: set[str] = set()
    for right in rights:
        if right is Right.SEND:
            if not sending and Right.MANAGE not in rights:
                continue
            if drafts:
                out.update("te")
        out.update(_LETTERS[right])
    return "".join(ch for ch in ORDER if ch in out)


def with_obsolete(rights: str) -> str:
    """`rights` plus RFC 2086 ``c`` and ``d`` when their RFC 4314 parts are present."""
    extra = ""
    if "k" in rights or "x" in rights:
        extra += "c"
    if "t" in rights or "e" in rights:
        extra += "d"
    return rights + extra


def acl_entries(box: Mailbox, folder: str, day: dt.date) -> list[tuple[str, str]]:
    """(identifier, rights) for GETACL: the owner and every co-holder active on `day`."""
    people: list[str] = []
    if box.owner is not None:
        people.append(box.owner)
    for c in box.coholders:
        if c.person not in people:
            people.append(c.person)
    out: list[tuple[str, str]] = []
    for person in people:
        rights = letters(box.rights_of(person, day), folder)
        if rights:
            out.append((person, rights))
    return out
