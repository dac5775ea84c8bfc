"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §3), pure.

Input: the matching messages in ascending message-number order, each with the number
to show (message number or UID) and its `MessageKeys`. Output: a list of `Node` trees
and `render` gives the ``* THREAD`` data (RFC 5256 §4): ``(3 6 (4 23)(44 7 96))``.
A dummy node (``number`` None) stands for a message that is referenced but absent.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.imap.sort import MessageKeys


@dataclass(eq=False, slots=True)
class Node:
    """A thread container (RFC 5256 §6.4: a message, or a dummy with no number)."""

    number: int | None = None
    keys: MessageKeys | None = None
    order: int = 0  # position in the input: the tie-break for equal sent dates
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def dummy(self) -> bool:
        return self.number is None

    def adopt(self, child: Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def descends_from(self, other: Node) -> bool:
        """Whether `other` is this node or one of its ancestors."""
        node: Node | None = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False


def _date_key(node: Node) -> tuple[float, int]:
    # RFC 5256 §6.4 step 4: a dummy sorts by its first child (children sorted first).
    while node.keys is None and node.children:
        node = node.children[0]
    return (node.keys.date if node.keys is not None else 0.0, node.order)


def _sort_tree(nodes: list[Node]) -> None:
    for n in nodes:
        _sort_tree(n.children)
    nodes.sort(key=_date_key)


def ordered_subject(messages: Sequence[tuple[int, MessageKeys]]) -> list[Node]:
    """RFC 5256 §3 ORDEREDSUBJECT: messages grouped by base subject, sorted by sent
    date in each group; the first of a group is the parent of all the others; groups
    are ordered by the sent date of their first message."""
    nodes = [Node(n, k, i) for i, (n, k) in enumerate(messages)]
    nodes.sort(key=lambda x: (x.keys.subject if x.keys else "", *_date_key(x)))
    roots: list[Node] = []
    for _subject, group in itertools.groupby(nodes, key=lambda x: x.keys.subject if x.keys else ""):
        first, *rest = list(group)
        for child in rest:
            first.adopt(child)
        roots.append(first)
    roots.sort(key=_date_key)
    return roots


def references(messages: Sequence[tuple[int, MessageKeys]]) -> list[Node]:
    """RFC 5256 §3 REFERENCES (the algorithm of §6.4, steps 1 to 6)."""
    table: dict[str, Node] = {}
    unique = itertools.count()
    # Step 1: a container per Message-ID; a missing or repeated ID gets a unique one
    # (the first message with an ID keeps it).
    mine: list[tuple[Node, MessageKeys]] = []
    for i, (number, keys) in enumerate(messages):
        ident = keys.message_id
        node = table.get(ident) if ident is not None else None
        if node is None or not node.dummy:
            node = Node()
            if ident is None or ident in table:
                ident = f"\0{next(unique)}"
            table[ident] = node
        node.number, node.keys, node.order = number, keys, i
        mine.append((node, keys))
    for node, keys in mine:
        # 1A: link the references as a chain, without overriding a link or making a loop
        prev: Node | None = None
        for ref in keys.references:
            ref_node = table.get(ref)
            if ref_node is None:
                ref_node = table[ref] = Node(order=len(messages) + len(table))
            if (
                prev is not None
                and ref_node.parent is None
                and ref_node is not prev
                and not prev.descends_from(ref_node)
            ):
                prev.adopt(ref_node)
            prev = ref_node
        # 1B: the last reference becomes the parent. A parent the message already has
        # (from a truncated References elsewhere) is dropped first, even when the new
        # link is then refused because it would make a loop (as Dovecot does).
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if prev is not None and not prev.descends_from(node):
            prev.adopt(node)
    # Step 2: the root set
    roots = [n for n in table.values() if n.parent is None]
    # Step 3: prune dummies
    roots = _prune(roots, root=True)
    for n in roots:
        n.parent = None
    # Step 4: sort (a dummy by its first child)
    _sort_tree(roots)
    # Step 5: gather the roots by base subject
    roots = _group_by_subject(roots)
    # Step 6: sort again, at every level
    _sort_tree(roots)
    return roots


def _prune(nodes: list[Node], *, root: bool) -> list[Node]:
    out: list[Node] = []
    for n in nodes:
        n.children = _prune(n.children, root=False)
        for ch in n.children:
            ch.parent = n
        if n.dummy and not n.children:
            continue  # 3A
        if n.dummy and (not root or len(n.children) == 1):
            out.extend(n.children)  # 3B: promote the children
            continue
        out.append(n)
    return out


def _subject_of(node: Node) -> tuple[str, bool]:
    src = node.children[0] if node.dummy and node.children else node
    if src.keys is None:
        return "", False
    return src.keys.subject, src.keys.reply


def _group_by_subject(roots: list[Node]) -> list[Node]:
    # 5A/5B: the subject table, preferring a dummy, then a non-reply.
    table: dict[str, Node] = {}
    for n in roots:
        subject, reply = _subject_of(n)
        if not subject:
            continue
        old = table.get(subject)
        if (
            old is None
            or (n.dummy and not old.dummy)
            or (not old.dummy and _subject_of(old)[1] and not reply)
        ):
            table[subject] = n
    # 5C: merge each root into the table's container for its subject
    merged: set[Node] = set()
    for n in roots:
        subject, reply = _subject_of(n)
        old = table.get(subject) if subject else None
        if old is None or old is n:
            continue
        merged.add(n)
        if old.dummy and n.dummy:
            for ch in list(n.children):
                old.adopt(ch)
        elif old.dummy or (reply and not _subject_of(old)[1]):
            old.adopt(n)
        else:
            # Neither is a reply of the other: both under a new dummy, which takes the
            # table entry's place (made in place, so the root list keeps its order).
            moved = Node(old.number, old.keys, old.order)
            for ch in list(old.children):
                moved.adopt(ch)
            old.number, old.keys = None, None
            old.adopt(moved)
            old.adopt(n)
    return [n for n in roots if n not in merged]


def _inner(node: Node) -> str:
    if node.dummy:
        return "".join(f"({_inner(ch)})" for ch in node.children)
    if not node.children:
        return str(node.number)
    if len(node.children) == 1:
        return f"{node.number} {_inner(node.children[0])}"
    return f"{node.number} " + "".join(f"({_inner(ch)})" for ch in node.children)


def render(roots: Sequence[Node]) -> str:
    """RFC 5256 §4 thread-list data for ``* THREAD``: one parenthesised list per thread."""
    return "".join(f"({_inner(n)})" for n in roots)
