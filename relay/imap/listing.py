"""What LIST and LSUB answer, pure (RFC 3501 §6.3.8-9, LIST-EXTENDED RFC 5258,
CHILDREN RFC 3348, SPECIAL-USE RFC 6154).

The handler gives the names the person can see (`Mailbox`: real folders and the
hierarchy nodes above the shared boxes), the names they subscribed to (which may no
longer exist: a subscription outlives its mailbox, RFC 3501 §6.3.6), the patterns and
the options; `list_mailboxes` / `lsub` say which names to answer with which attributes.

* A name that is only the parent of real folders (``a`` when ``a/b`` exists but ``a``
  does not, or a hierarchy node) is listed ``\\Noselect``; a subscribed name that does
  not exist is ``\\NonExistent`` (RFC 5258 §3.4).
* LSUB lists the subscribed names that match; a name that ``%`` stops at and that is
  not subscribed but has a subscribed child is listed ``\\Noselect`` (§6.3.9).
* ``(SUBSCRIBED RECURSIVEMATCH)``: a subscribed name that matches no pattern makes its
  nearest matching superior appear with ``CHILDINFO ("SUBSCRIBED")`` (RFC 5258 §3.5);
  one that matches is listed itself and its superiors are not reported for it (what
  Dovecot does, and what imaptest's ``listext`` checks).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.imap import commands as c
from relay.imap.names import superiors


class Matcher(Protocol):
    """A compiled LIST pattern (`relay.imap.names.pattern`), or one that matches the
    names as an IMAP4rev2 client reads them (`relay.imap.handlers.mailboxes`)."""

    def fullmatch(self, name: str, /) -> object: ...


class Kind(enum.Enum):
    FOLDER = "folder"  # a real, selectable folder
    NODE = "node"  # a hierarchy node that can never be selected (Partages/...)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A name the person can see."""

    name: str
    kind: Kind = Kind.FOLDER
    special_use: str | None = None


@dataclass(frozen=True, slots=True)
class Listed:
    """One LIST / LSUB answer line: name, attributes, and the CHILDINFO extended item."""

    name: str
    attributes: tuple[str, ...]
    childinfo: bool = False
    selectable: bool = False  # a real folder (LIST-STATUS may report on it)


def _matches(name: str, patterns: Sequence[Matcher]) -> bool:
    return any(p.fullmatch(name) for p in patterns)


class _Tree:
    """The visible names: real folders, nodes, and the implied parents of both."""

    def __init__(self, mailboxes: Iterable[Mailbox]) -> None:
        self.known: dict[str, Mailbox] = {m.name: m for m in mailboxes}
        self.parents: set[str] = set()
        for name in self.known:
            self.parents.update(superiors(name))

    def has_children(self, name: str) -> bool:
        return name in self.parents

    def names(self) -> set[str]:
        return set(self.known) | self.parents

    def attributes(self, name: str, *, subscribed: bool, show_subscribed: bool) -> list[str]:
        m = self.known.get(name)
        attrs: list[str] = []
        if m is None and name not in self.parents:
            attrs.append("\\NonExistent")  # RFC 5258 §3.4 (it implies \Noselect)
        else:
            if m is None or m.kind is Kind.NODE:
                attrs.append("\\Noselect")
            attrs.append("\\HasChildren" if self.has_children(name) else "\\HasNoChildren")
            if m is not None and m.special_use:
                attrs.append(m.special_use)
        if subscribed and show_subscribed:
            attrs.append("\\Subscribed")
        return attrs

    def selectable(self, name: str) -> bool:
        m = self.known.get(name)
        return m is not None and m.kind is Kind.FOLDER


def _order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: (n != "INBOX", n))


def list_mailboxes(
    mailboxes: Iterable[Mailbox],
    subscribed: Iterable[str],
    patterns: Sequence[Matcher],
    selection: frozenset[c.ListSelect] = frozenset(),
    returns: frozenset[c.ListReturn] = frozenset(),
) -> list[Listed]:
    """The LIST answer (RFC 3501 §6.3.8 with RFC 5258 selection and return options)."""
    tree = _Tree(mailboxes)
    subs = set(subscribed)
    show_subscribed = c.ListSelect.SUBSCRIBED in selection or c.ListReturn.SUBSCRIBED in returns
    if c.ListSelect.SUBSCRIBED in selection:
        chosen = {n for n in subs if _matches(n, patterns)}
        childinfo: set[str] = set()
        if c.ListSelect.RECURSIVEMATCH in selection:
            for n in subs - chosen:
                for parent in reversed(superiors(n)):
                    if _matches(parent, patterns):
                        childinfo.add(parent)
                        break
        names = chosen | childinfo
    else:
        childinfo = set()
        names = {n for n in tree.names() if _matches(n, patterns)}
    out: list[Listed] = []
    for name in _order(names):
        m = tree.known.get(name)
        if c.ListSelect.SPECIAL_USE in selection and (m is None or not m.special_use):
            continue
        attrs = tree.attributes(name, subscribed=name in subs, show_subscribed=show_subscribed)
        out.append(Listed(name, tuple(attrs), name in childinfo, tree.selectable(name)))
    return out


def lsub(mailboxes: Iterable[Mailbox], subscribed: Iterable[str], pattern: Matcher) -> list[Listed]:
    """The LSUB answer (RFC 3501 §6.3.9)."""
    tree = _Tree(mailboxes)
    subs = set(subscribed)
    names: dict[str, tuple[str, ...]] = {}
    for n in subs:
        if pattern.fullmatch(n):
            names[n] = () if tree.selectable(n) else ("\\Noselect",)
            continue
        for parent in superiors(n):
            # "%" stopped at a superior of a subscribed name: it is reported, and as
            # \Noselect unless it is itself subscribed (then it is listed on its own).
            if parent not in subs and pattern.fullmatch(parent):
                names.setdefault(parent, ("\\Noselect",))
    return [Listed(n, names[n], selectable=tree.selectable(n)) for n in _order(names)]
