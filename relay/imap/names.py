"""IMAP mailbox names ↔ (box address, folder), pure (RFC 2342 namespaces, RFC 3501 §5.1).

The personal namespace ``""`` holds the folders of the session's own box (the person's
PER box, or the box they authorised as). Each other box the person co-holds today sits
in the shared namespace under ``Partages/<box address>/``:
``Partages/secretariat@cpts.example/INBOX``. ``Partages`` and ``Partages/<box>`` are
hierarchy nodes that cannot be selected. The hierarchy delimiter is ``/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DELIMITER: Final = "/"
SHARED_ROOT: Final = "Partages"
SHARED_PREFIX: Final = SHARED_ROOT + DELIMITER


@dataclass(frozen=True, slots=True)
class Target:
    """A folder of a box, as named by a client."""

    box: str
    folder: str


@dataclass(frozen=True, slots=True)
class View:
    """Which boxes a session sees: its own (personal namespace) and the shared ones."""

    personal: str | None
    shared: tuple[str, ...]

    def boxes(self) -> tuple[str, ...]:
        return ((self.personal,) if self.personal else ()) + self.shared


def normalise(name: str) -> str:
    """``inbox`` in any case is INBOX (RFC 3501 §5.1), also as a hierarchy prefix."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name[:6].upper() == "INBOX/":
        return "INBOX" + name[5:]
    return name


def resolve(name: str, view: View) -> Target | None:
    """The box and folder `name` designates, or None (hierarchy node or unknown box)."""
    name = normalise(name)
    if name.startswith(SHARED_PREFIX):
        rest = name[len(SHARED_PREFIX) :]
        box, sep, folder = rest.partition(DELIMITER)
        box = box.lower()
        if not sep or not folder or box not in view.shared:
            return None
        return Target(box, normalise(folder))
    if view.personal is None or not name or name == SHARED_ROOT:
        return None
    return Target(view.personal, name)


def display(target: Target, view: View) -> str:
    """The name a client sees for a folder of a box."""
    if target.box == view.personal:
        return target.folder
    return f"{SHARED_PREFIX}{target.box}{DELIMITER}{target.folder}"


def hierarchy_nodes(view: View) -> list[str]:
    """The non-selectable names above the shared folders."""
    if not view.shared:
        return []
    return [SHARED_ROOT, *(SHARED_PREFIX + box for box in view.shared)]


def pattern(reference: str, mailbox: str) -> re.Pattern[str]:
    """A LIST pattern (RFC 3501 §6.3.8): ``*`` matches anything, ``%`` anything but
    the delimiter. The reference is prefixed as is."""
    text = normalise(reference + mailbox)
    out = []
    for ch in text:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def superiors(name: str) -> list[str]:
    """The names above `name`, outermost first: ``a/b/c`` → ``a``, ``a/b``."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]
