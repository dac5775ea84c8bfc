"""The flags a selected mailbox announces and the flags each message shows, pure.

RFC 3501 §7.2.6: the untagged ``FLAGS`` response lists the flags that apply in the
mailbox, and a client may drop or misshow a keyword it was never told of (Thunderbird's
``$label1``, ``$Forwarded``, ``$MDNSent``, NeoMutt's ``Old``). So the session keeps a
`MailboxFlags` for the selected mailbox, and before any message carrying a keyword the
client has not heard of reaches it (a FETCH, STORE's answer, another session's change,
a new message) it sends ``FLAGS`` and ``PERMANENTFLAGS`` again with that keyword
(`MailboxFlags.learn`). The list only grows while the mailbox stays selected: a client
may keep using a keyword it was told of.

``\\Recent`` (RFC 3501 §2.3.2) is not stored with a message: the session knows which
messages are recent for it and adds the flag when it shows a message's flags (`shown`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from relay.imap import response as r

# RFC 3501 §2.3.2 system flags a client can set, in the order Dovecot lists them.
SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
RECENT: Final = "\\Recent"
SEEN: Final = "\\Seen"
DELETED: Final = "\\Deleted"


def is_keyword(flag: str) -> bool:
    """Whether `flag` is a keyword (``$Forwarded``), not a ``\\``-flag (RFC 3501 §2.3.2)."""
    return not flag.startswith("\\")


def shown(flags: Iterable[str], *, recent: bool) -> bytes:
    """The flag list of a FETCH response: the stored flags, plus ``\\Recent`` when the
    message is recent for this session, in a stable order."""
    if isinstance(flags, frozenset):
        return _shown(flags, recent)  # a folder has few distinct flag sets
    return _shown_uncached(flags, recent)


@functools.lru_cache(maxsize=4096)
def _shown(flags: frozenset[str], recent: bool) -> bytes:
    return _shown_uncached(flags, recent)


def _shown_uncached(flags: Iterable[str], recent: bool) -> bytes:
    out = sorted(flags)
    if recent:
        out.insert(0, RECENT)
    return r.flag_list(out)


def permanent_system_flags(rights: str) -> tuple[str, ...]:
    """The system flags a person with these RFC 4314 rights changes for good (§4):
    ``s`` for \\Seen, ``t`` for \\Deleted, ``w`` for the others."""
    return tuple(
        f for f in SYSTEM_FLAGS if ("s" if f == SEEN else "t" if f == DELETED else "w") in rights
    )


@dataclass
class MailboxFlags:
    """What the session has told the client about the selected mailbox's flags.

    ``permanent`` are the system flags the person may store; ``new_keywords`` whether
    they may store keywords (then the keywords are permanent too and ``\\*`` says new
    ones can be made, RFC 3501 §7.1 PERMANENTFLAGS). A read-only selection has none.
    """

    permanent: tuple[str, ...]
    new_keywords: bool
    keywords: list[str] = field(default_factory=list)  # announced, in announcement order
    _known: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self._known = set(self.keywords)

    def responses(self) -> list[bytes]:
        """``* FLAGS (...)`` and ``* OK [PERMANENTFLAGS (...)]`` as they stand."""
        permanent = [*self.permanent, *self.keywords] if self.new_keywords else [*self.permanent]
        return [
            r.untagged(b"FLAGS " + r.flag_list([*SYSTEM_FLAGS, *self.keywords])),
            r.untagged_status(
                r.Status.OK,
                "Flags permitted" if permanent else "No permanent flags permitted",
                r.permanentflags(permanent, keywords=self.new_keywords),
            ),
        ]

    def learn(self, flags: Iterable[str]) -> list[bytes]:
        """Responses to send before a message with `flags` reaches the client: FLAGS
        and PERMANENTFLAGS again if it carries a keyword not announced yet, else none."""
        new = {f for f in flags if is_keyword(f) and f not in self._known}
        if not new:
            return []
        for f in sorted(new):
            self._known.add(f)
            self.keywords.append(f)
        return self.responses()
