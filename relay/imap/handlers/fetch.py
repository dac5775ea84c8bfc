"""FETCH and UID FETCH (RFC 3501 §6.4.5; BINARY RFC 3516; CONDSTORE MODSEQ)."""

from __future__ import annotations

import bisect

from relay.audit.events import ImapFetched
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap.flags import shown
from relay.imap.handlers.common import (
    RAW_BATCH,
    ClientBug,
    Result,
    UnknownCte,
    members,
    need,
    record,
    rights,
    selected,
    traced,
    who,
)
from relay.imap.session import Selected, Session
from relay.message.analysis import MessageMeta
from relay.message.imapview import (
    Rendered,
    binary_section,
    part_exists,
    partial,
    section,
)
from relay.store.mailstore import SEEN, MessageRow

_ROW_ITEMS = frozenset(
    {
        c.FetchItem.INTERNALDATE,
        c.FetchItem.RFC822_SIZE,
        c.FetchItem.ENVELOPE,
        c.FetchItem.BODY,
        c.FetchItem.BODYSTRUCTURE,
        c.FetchItem.BODY_SECTION,
        c.FetchItem.BINARY,
        c.FetchItem.BINARY_SIZE,
        c.FetchItem.RFC822,
        c.FetchItem.RFC822_HEADER,
        c.FetchItem.RFC822_TEXT,
    }
)
_META_ITEMS = _ROW_ITEMS - {c.FetchItem.INTERNALDATE, c.FetchItem.RFC822_SIZE}
_RAW_ITEMS = frozenset(
    {
        c.FetchItem.BODY_SECTION,
        c.FetchItem.BINARY,
        c.FetchItem.BINARY_SIZE,
        c.FetchItem.RFC822,
        c.FetchItem.RFC822_HEADER,
        c.FetchItem.RFC822_TEXT,
    }
)


def _sets_seen(a: c.FetchAttr) -> bool:
    """RFC 3501 §6.4.5: BODY[...], BINARY[...], RFC822 and RFC822.TEXT set \\Seen."""
    if a.item in (c.FetchItem.BODY_SECTION, c.FetchItem.BINARY):
        return not a.peek
    return a.item in (c.FetchItem.RFC822, c.FetchItem.RFC822_TEXT)


def _section_data(a: c.FetchAttr, raw: bytes, meta: MessageMeta) -> bytes | None:
    sec = a.section or c.Section()
    if sec.parts and not part_exists(meta, sec.parts):
        return None
    kind = sec.text.value if sec.text is not None else ""
    return section(raw, meta, sec.parts, kind, sec.header_fields)


def _literal(data: bytes, binary: bool = False) -> bytes:
    if binary and b"\0" in data:
        return b"~{%d}\r\n" % len(data) + data  # RFC 3516 literal8
    return b"{%d}\r\n" % len(data) + data


def _render(
    a: c.FetchAttr,
    uid: int,
    sel: Selected,
    row: MessageRow | None,
    meta: MessageMeta | None,
    raw: bytes | None,
    rendered: Rendered,
) -> bytes:
    item = a.item
    if item is c.FetchItem.FLAGS:
        return b"FLAGS " + sel.flag_list(uid)
    if item is c.FetchItem.UID:
        return b"UID %d" % uid
    if item is c.FetchItem.MODSEQ:
        return b"MODSEQ (%d)" % sel.flags[uid].modseq
    assert row is not None
    if item is c.FetchItem.INTERNALDATE:
        return b"INTERNALDATE " + r.date_time(row.internal_date).encode()
    if item is c.FetchItem.RFC822_SIZE:
        return b"RFC822.SIZE %d" % row.size
    assert meta is not None
    if item is c.FetchItem.ENVELOPE:
        return b"ENVELOPE " + rendered.get(row.blob_id, "ENVELOPE", meta)
    if item is c.FetchItem.BODYSTRUCTURE:
        return b"BODYSTRUCTURE " + rendered.get(row.blob_id, "BODYSTRUCTURE", meta)
    if item is c.FetchItem.BODY:
        return b"BODY " + rendered.get(row.blob_id, "BODY", meta)
    assert raw is not None
    if item is c.FetchItem.RFC822:
        return b"RFC822 " + _literal(raw)
    if item is c.FetchItem.RFC822_HEADER:
        return b"RFC822.HEADER " + _literal(section(raw, meta, (), "HEADER"))
    if item is c.FetchItem.RFC822_TEXT:
        return b"RFC822.TEXT " + _literal(section(raw, meta, (), "TEXT"))
    name = r.fetch_item_name(a).encode()
    if item is c.FetchItem.BODY_SECTION:
        data = _section_data(a, raw, meta)
        if data is None:
            return name + b" NIL"
        if a.partial is not None:
            data = partial(data, a.partial.offset, a.partial.length)
        return name + b" " + _literal(data)
    parts = a.section.parts if a.section is not None else ()
    if parts and not part_exists(meta, parts):
        return name + (b" 0" if item is c.FetchItem.BINARY_SIZE else b" NIL")
    decoded = binary_section(raw, meta, parts)
    if decoded is None:
        raise UnknownCte("Unknown Content-Transfer-Encoding")
    if item is c.FetchItem.BINARY_SIZE:
        return name + b" %d" % len(decoded)
    if a.partial is not None:
        decoded = partial(decoded, a.partial.offset, a.partial.length)
    return name + b" " + _literal(decoded, binary=True)


_STATE_ITEMS = frozenset({c.FetchItem.UID, c.FetchItem.FLAGS, c.FetchItem.MODSEQ})


async def _emit_states(
    s: Session, sel: Selected, uids: list[int], attrs: list[c.FetchAttr]
) -> None:
    """FETCH of UID, FLAGS and MODSEQ only (``FETCH 1:* (UID FLAGS)``, a client's
    resynchronisation): from the snapshot, one line per message, in the order asked,
    each flag list rendered once per distinct set."""
    fmt = b"* %d FETCH (" + b" ".join(_STATE_FORMAT[a.item] for a in attrs) + b")\r\n"
    fields = [a.item for a in attrs]
    flags, recent, show_recent = sel.flags, sel.recent, sel.show_recent
    every = sel.uids
    whole = len(uids) == len(every)  # then the n-th UID asked is message n
    rendered: dict[tuple[frozenset[str], bool], bytes] = {}
    pos = 0
    lines: list[bytes] = []
    for n, uid in enumerate(uids):
        # `uids` ascend: each number is found from the previous one on.
        pos = n if whole else bisect.bisect_left(every, uid, pos)
        f = flags[uid]
        values: list[int | bytes] = [pos + 1]
        for item in fields:
            if item is c.FetchItem.UID:
                values.append(uid)
            elif item is c.FetchItem.FLAGS:
                key = (f.flags, show_recent and uid in recent)
                text = rendered.get(key)
                if text is None:
                    text = rendered[key] = shown(key[0], recent=key[1])
                values.append(text)
            else:
                values.append(f.modseq)
        lines.append(fmt % tuple(values))
        if len(lines) == 2048:
            s.emit(b"".join(lines))
            lines.clear()
            await s.flush_if_large()
    s.emit(b"".join(lines))


_STATE_FORMAT = {
    c.FetchItem.UID: b"UID %d",
    c.FetchItem.FLAGS: b"FLAGS %s",
    c.FetchItem.MODSEQ: b"MODSEQ (%d)",
}


async def _rows(
    s: Session, sel: Selected, uids: list[int], *, meta: bool, raw: bool
) -> tuple[dict[int, MessageRow], dict[str, MessageMeta], dict[str, bytes]]:
    """Rows, metadata and (for a few messages) bytes of `uids`, read only where they
    are not known yet. A UID's row never changes: the session's (`Selected.rows`) and
    those of the daemon's other sessions (`MailStore.cached_rows`) are used, with the
    metadata and bytes in memory (`MailStore.cached_meta`, `cached_raw`); the rest is
    one query. A message removed by another session (not told yet) is not looked
    for: it has no row any more."""
    mail = s.service.mail
    known, gone = sel.rows, sel.pending_expunge
    held = {u: row for u in uids if (row := known.get(u)) is not None}
    if len(held) < len(uids):
        held |= mail.cached_rows(sel.folder, (u for u in uids if u not in held))
    rows: dict[int, MessageRow] = {}
    metas: dict[str, MessageMeta] = {}
    raws: dict[str, bytes] = {}
    for u, row in held.items():
        m = mail.cached_meta(row.blob_id) if meta or raw else None
        octets = mail.cached_raw(row.blob_id) if raw else None
        if (m is None and (meta or raw)) or (octets is None and raw):
            continue
        rows[u] = row
        if m is not None:
            metas[row.blob_id] = m
        if octets is not None:
            raws[row.blob_id] = octets
    missing = [u for u in uids if u not in rows and u not in gone]
    if missing:
        read, more_metas, more_raws = await mail.fetch_data(
            sel.folder.id, missing, meta=meta, raw=raw
        )
        mail.keep_rows(sel.folder, read.values())
        rows |= read
        metas |= more_metas
        raws |= more_raws
    for u, row in rows.items():
        if u in sel.flags:
            known[u] = row
    return rows, metas, raws


async def h_fetch(s: Session, cmd: c.Fetch) -> Result:
    sel = selected(s)
    need(s, sel.target, "r", "read messages")
    uids = members(sel, cmd.sequence_set, cmd.uid)
    attrs = list(cmd.attributes)
    kinds = {a.item for a in attrs}
    if (cmd.uid or "QRESYNC" in s.enabled) and c.FetchItem.UID not in kinds:
        # RFC 3501 §6.4.8; with QRESYNC every FETCH response names its UID, as
        # Dovecot does, so that the client can apply it without sequence numbers.
        attrs.insert(0, c.FetchAttr(c.FetchItem.UID))
    if cmd.vanished and "QRESYNC" not in s.enabled:
        raise ClientBug("ENABLE QRESYNC first (RFC 7162 §3.2.6)")
    if cmd.changed_since is not None or c.FetchItem.MODSEQ in kinds:
        s.enable_condstore()  # RFC 7162 §3.1: FETCH MODSEQ / CHANGEDSINCE enable it
    if cmd.vanished and cmd.changed_since is not None:
        # RFC 7162 §3.2.6: the UIDs of the set removed since CHANGEDSINCE, first.
        gone = await s.service.mail.vanished(sel.folder.id, cmd.changed_since)
        top = max(sel.largest_uid, gone[-1] if gone else 0)
        gone = [u for u in gone if cmd.sequence_set.contains(u, top)]
        if gone:
            s.emit(r.untagged("VANISHED (EARLIER) " + r.sequence_set(gone)))
    if cmd.changed_since is not None:
        uids = [u for u in uids if sel.flags[u].modseq > cmd.changed_since]
        if c.FetchItem.MODSEQ not in kinds:
            attrs.append(c.FetchAttr(c.FetchItem.MODSEQ))
    if not uids:
        return f"{'UID ' if cmd.uid else ''}FETCH completed", None
    content = [a for a in attrs if a.item in _RAW_ITEMS]
    # Implicit \Seen (RFC 3501 §6.4.5), only where the person may set it.
    if any(_sets_seen(a) for a in attrs) and not sel.read_only and "s" in rights(s, sel.target):
        unseen = [u for u in uids if SEEN not in sel.flags[u].flags]
        if unseen:
            res = await s.service.mail.store_flags(
                sel.folder.id, unseen, "+FLAGS", frozenset({SEEN}), person=sel.seen_person
            )
            for f in res.changed:
                s.update_flags(f)
            if c.FetchItem.FLAGS not in kinds:
                attrs.append(c.FetchAttr(c.FetchItem.FLAGS))
            if "CONDSTORE" in s.enabled:
                # RFC 7162 §3.2.4: a FETCH that sets \Seen gives UID and MODSEQ too
                for item in (c.FetchItem.UID, c.FetchItem.MODSEQ):
                    if item not in {a.item for a in attrs}:
                        attrs.append(c.FetchAttr(item))
    if {a.item for a in attrs} <= _STATE_ITEMS:
        await _emit_states(s, sel, uids, attrs)
        return f"{'UID ' if cmd.uid else ''}FETCH completed", None
    rows: dict[int, MessageRow] = {}
    metas: dict[str, MessageMeta] = {}
    raws: dict[str, bytes] = {}
    small = len(uids) <= RAW_BATCH
    if kinds & _ROW_ITEMS:
        rows, metas, raws = await _rows(
            s, sel, uids, meta=bool(kinds & _META_ITEMS), raw=bool(content) and small
        )
    if content and traced(s, sel.target.box):
        present = [u for u in uids if u in rows]
        await record(
            s,
            ImapFetched(
                **who(s, sel.target.box, f"{'UID ' if cmd.uid else ''}FETCH ({sel.name})"),
                folder=sel.target.folder,
                uids=tuple(present),
                message_ids=tuple(m for u in present if (m := rows[u].message_id)),
                items=tuple(dict.fromkeys(r.fetch_item_name(a) for a in content)),
                answer="OK",
            ),
        )
    step = RAW_BATCH if content else len(uids)
    memo = s.service.rendered
    for start in range(0, len(uids), step):
        batch = uids[start : start + step]
        if content and not small:
            raws = await s.service.mail.raws(rows[u].blob_id for u in batch if u in rows)
        for uid in batch:
            row = rows.get(uid)
            if kinds & _ROW_ITEMS and row is None:
                continue  # expunged by another session; its EXPUNGE comes later
            meta = metas.get(row.blob_id) if row is not None else None
            raw = raws.get(row.blob_id) if row is not None else None
            body = b" ".join(_render(a, uid, sel, row, meta, raw, memo) for a in attrs)
            s.emit(b"* %d FETCH (" % sel.seq_of(uid) + body + b")\r\n")
        await s.flush_if_large()
    return f"{'UID ' if cmd.uid else ''}FETCH completed", None
