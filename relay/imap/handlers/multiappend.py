"""APPEND of several messages (MULTIAPPEND, RFC 3502) and of messages assembled from
text and parts of other messages (CATENATE, RFC 4469).

All the messages go into the folder in one store transaction (`MailStore.append_many`,
the path a single APPEND takes too), with one audit event each: either every message
is appended or none (RFC 3502 §6.3.11). A CATENATE URL is resolved in the person's own
view, with their rights: a folder they may not read (RFC 4314 ``r``) is a bad URL,
exactly like one that does not exist (RFC 4469 §5: ``NO [BADURL "url"]``), so a URL
tells nothing about boxes the person cannot see. Reading a part of a traced box is
audited as a content read before the new message is written.
"""

from __future__ import annotations

import datetime as dt

from relay.audit.events import AuditEvent, ImapAppended, ImapFetched
from relay.imap import commands as c
from relay.imap import response as r
from relay.imap import rev2
from relay.imap.handlers.append import prepare, settable
from relay.imap.handlers.common import (
    ImapError,
    Result,
    existing,
    need,
    record,
    rights,
    seen_person,
    target_of,
    traced,
    who,
)
from relay.imap.imapurl import parse_message_url, parse_section
from relay.imap.session import Session
from relay.message.imapview import part_exists, partial, section
from relay.store.mailstore import Appended


class BadUrl(ImapError):
    """RFC 4469 §5: a CATENATE URL that names nothing this person may read."""

    imap_code = "BADURL"

    def __init__(self, url: str) -> None:
        super().__init__("The URL does not name a message part you may read")
        try:
            self.imap_argument = r.quoted(url).decode()
        except ValueError:
            self.imap_argument = ""


class TooBig(ImapError):
    """RFC 4469 §5 / RFC 7889: the assembled message is over the size limit."""

    imap_code = "TOOBIG"


class EmptyMessage(ImapError):
    imap_code = "CLIENTBUG"


def _mailbox_of(s: Session, decoded: str) -> str:
    # RFC 5092 §3.3: the name is UTF-8, percent-encoded; a plain ASCII name may already
    # be in modified UTF-7, as an IMAP4rev1 client lists it. An IMAP4rev2 client lists
    # UTF-8 names ("A&B" is three characters), so its URLs hold those.
    if s.rev2:
        return rev2.internal_name(decoded)
    return decoded if decoded.isascii() else r.encode_mailbox_name(decoded)


async def _url_part(s: Session, url: str, request: str) -> bytes:
    named = parse_message_url(url)
    spec = parse_section(named.section) if named is not None else None
    if named is None or spec is None:
        raise BadUrl(url)
    try:
        target = target_of(s, _mailbox_of(s, named.mailbox))
    except ImapError:
        raise BadUrl(url) from None
    if "r" not in rights(s, target):
        raise BadUrl(url)
    folder = await s.service.mail.folder(target.box, target.folder)
    if folder is None or (
        named.uidvalidity is not None and named.uidvalidity != folder.uidvalidity
    ):
        raise BadUrl(url)
    rows, metas, raws = await s.service.mail.fetch_data(folder.id, [named.uid], meta=True, raw=True)
    row = rows.get(named.uid)
    if row is None:
        raise BadUrl(url)
    raw, meta = raws[row.blob_id], metas[row.blob_id]
    parts, kind, fields = spec
    if parts and not part_exists(meta, parts):
        raise BadUrl(url)
    data = section(raw, meta, parts, kind, fields)
    if named.partial is not None:
        offset, length = named.partial
        data = partial(data, offset, length if length is not None else len(data))
    if traced(s, target.box):
        await record(
            s,
            ImapFetched(
                **who(s, target.box, request),
                folder=target.folder,
                uids=(named.uid,),
                message_ids=(row.message_id,) if row.message_id else (),
                items=("CATENATE URL",),
                answer="OK",
            ),
        )
    return data


async def h_append_many(s: Session, cmd: c.AppendMany) -> Result:
    target = await existing(s, cmd.mailbox, trycreate=True)
    need(s, target, "i", "add messages")
    have = rights(s, target)
    limit = s.runtime.config.limits.imap_max_literal_bytes
    request = f"APPEND {cmd.mailbox}"
    built: list[Appended] = []
    now = dt.datetime.now(dt.UTC)
    for m in cmd.messages:
        chunks = [
            p if isinstance(p, bytes) else await _url_part(s, p.url, request) for p in m.parts
        ]
        raw = b"".join(chunks)
        if not raw:
            raise EmptyMessage("An appended message cannot be empty")
        if len(raw) > limit:
            raise TooBig(f"The message is larger than the limit of {limit} octets")
        raw, meta = await prepare(raw, m.binary)
        built.append(Appended(raw, meta, settable(have, m.flags), m.internal_date or now))
    traced_box = traced(s, target.box)

    def events(uids: list[int]) -> list[AuditEvent | None]:
        if not traced_box:
            return []
        return [
            ImapAppended(
                **who(s, target.box, request),
                folder=target.folder,
                uid=uid,
                message_id=a.meta.message_id,
                size_bytes=len(a.raw),
                answer="OK",
            )
            for uid, a in zip(uids, built, strict=True)
        ]

    uidvalidity, uids = await s.service.mail.append_many(
        target.box, target.folder, built, person=seen_person(s, target.box), make_event=events
    )
    return "APPEND completed", r.appenduid(uidvalidity, uids)
