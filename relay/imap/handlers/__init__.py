"""IMAP command handlers: one function per command type, dispatched by `HANDLERS`.

A handler receives the session and its parsed command, checks the person's rights on
the folder (RFC 4314 letters from `relay.imap.acl`, evaluated against the config of
the moment, so a reload takes effect at once), does the work through the mail store,
appends untagged responses with `s.emit`, and returns the tagged OK text and code.
Refusals are raised as typed errors that carry their response code; the session turns
them into ``NO``/``BAD`` in one place.

Traceability (issue 4): every command that touches a box other than the person's own
PER box writes one audit event naming the person — SELECT/EXAMINE, content fetches
(UIDs and Message-IDs, never content), flag changes, expunges, copies and moves,
appends, folder changes. Writes carry their event in their own transaction; reads are
recorded (durably) before the content is sent.
"""

from __future__ import annotations

from relay.imap import commands as c
from relay.imap.handlers.append import h_append
from relay.imap.handlers.auth import h_authenticate, h_login
from relay.imap.handlers.common import Handler
from relay.imap.handlers.connection import (
    h_capability,
    h_enable,
    h_id,
    h_idle,
    h_logout,
    h_namespace,
    h_noop,
    h_starttls,
)
from relay.imap.handlers.copy import h_copy
from relay.imap.handlers.fetch import h_fetch
from relay.imap.handlers.mailboxes import (
    h_create,
    h_delete,
    h_list,
    h_rename,
    h_select,
    h_status,
    h_subscribe,
)
from relay.imap.handlers.multiappend import h_append_many
from relay.imap.handlers.notify import h_notify
from relay.imap.handlers.rights import h_getacl, h_listrights, h_myrights, h_setacl
from relay.imap.handlers.search import h_cancelupdate, h_search
from relay.imap.handlers.sort import h_sort
from relay.imap.handlers.store import h_close, h_expunge, h_store
from relay.imap.handlers.thread import h_thread

HANDLERS: dict[type[c.Command], Handler] = {
    c.Capability: h_capability,
    c.Noop: h_noop,
    c.Logout: h_logout,
    c.Id: h_id,
    c.StartTls: h_starttls,
    c.Login: h_login,
    c.Authenticate: h_authenticate,
    c.Enable: h_enable,
    c.Namespace: h_namespace,
    c.Select: h_select,
    c.Examine: h_select,
    c.Create: h_create,
    c.Delete: h_delete,
    c.Rename: h_rename,
    c.Subscribe: h_subscribe,
    c.Unsubscribe: h_subscribe,
    c.List: h_list,
    c.Lsub: h_list,
    c.Status: h_status,
    c.Append: h_append,
    c.AppendMany: h_append_many,
    c.Idle: h_idle,
    c.MyRights: h_myrights,
    c.GetAcl: h_getacl,
    c.ListRights: h_listrights,
    c.SetAcl: h_setacl,
    c.DeleteAcl: h_setacl,
    c.Check: h_noop,
    c.Close: h_close,
    c.Unselect: h_close,
    c.Expunge: h_expunge,
    c.Search: h_search,
    c.Fetch: h_fetch,
    c.Store: h_store,
    c.Copy: h_copy,
    c.Move: h_copy,
    c.Sort: h_sort,
    c.Thread: h_thread,
    c.CancelUpdate: h_cancelupdate,
    c.Notify: h_notify,
}
