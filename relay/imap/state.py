"""The IMAP session state machine as data (RFC 3501 §3), pure.

Everything that affects the session state lives here: the states, which commands each
state accepts (checked before dispatch), and the transition table. An illegal
transition raises `IllegalTransition`, a programming error of the server, never a
client one: a command that is not valid in a state is answered ``BAD`` by the session
before any handler runs.
"""

from __future__ import annotations

import enum
from typing import Final

from relay.imap import commands as c


class State(enum.Enum):
    """RFC 3501 §3: Not Authenticated, Authenticated, Selected, Logout."""

    NOT_AUTHENTICATED = "not-authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Event(enum.Enum):
    """What moves a session from one state to another (RFC 3501 §3, figure)."""

    AUTHENTICATED = "authenticated"  # LOGIN / AUTHENTICATE succeeded
    SELECTED = "selected"  # SELECT / EXAMINE succeeded
    SELECT_FAILED = "select-failed"  # RFC 3501 §6.3.1: a failed SELECT deselects
    DESELECTED = "deselected"  # CLOSE, UNSELECT, or access to the box revoked
    LOGOUT = "logout"  # LOGOUT, BYE, connection lost


class IllegalTransition(RuntimeError):
    """The server tried a transition the table does not allow."""


_ANY: Final[tuple[type[c.Command], ...]] = (c.Capability, c.Noop, c.Logout, c.Id)
_NOT_AUTHENTICATED: Final[tuple[type[c.Command], ...]] = (
    c.StartTls,
    c.Authenticate,
    c.Login,
)
_AUTHENTICATED: Final[tuple[type[c.Command], ...]] = (
    c.Enable,
    c.Namespace,
    c.Select,
    c.Examine,
    c.Create,
    c.Delete,
    c.Rename,
    c.Subscribe,
    c.Unsubscribe,
    c.List,
    c.Lsub,
    c.Status,
    c.Append,
    c.AppendMany,  # RFC 3502, RFC 4469
    c.Notify,  # RFC 5465
    c.Idle,
    c.GetAcl,
    c.SetAcl,
    c.DeleteAcl,
    c.ListRights,
    c.MyRights,
)
_SELECTED: Final[tuple[type[c.Command], ...]] = (
    c.Check,
    c.Close,
    c.Unselect,
    c.Expunge,
    c.Search,
    c.Fetch,
    c.Store,
    c.Copy,
    c.Move,
    c.Sort,  # RFC 5256
    c.Thread,
    c.CancelUpdate,  # RFC 5267 §4.3
)

# Which commands each state accepts.
ALLOWED: Final[dict[State, frozenset[type[c.Command]]]] = {
    State.NOT_AUTHENTICATED: frozenset(_ANY + _NOT_AUTHENTICATED),
    State.AUTHENTICATED: frozenset(_ANY + _AUTHENTICATED),
    State.SELECTED: frozenset(_ANY + _AUTHENTICATED + _SELECTED),
    State.LOGOUT: frozenset(),
}

TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (State.NOT_AUTHENTICATED, Event.AUTHENTICATED): State.AUTHENTICATED,
    (State.NOT_AUTHENTICATED, Event.LOGOUT): State.LOGOUT,
    (State.AUTHENTICATED, Event.SELECTED): State.SELECTED,
    (State.AUTHENTICATED, Event.SELECT_FAILED): State.AUTHENTICATED,
    (State.AUTHENTICATED, Event.DESELECTED): State.AUTHENTICATED,
    (State.AUTHENTICATED, Event.LOGOUT): State.LOGOUT,
    (State.SELECTED, Event.SELECTED): State.SELECTED,
    (State.SELECTED, Event.SELECT_FAILED): State.AUTHENTICATED,
    (State.SELECTED, Event.DESELECTED): State.AUTHENTICATED,
    (State.SELECTED, Event.LOGOUT): State.LOGOUT,
    (State.LOGOUT, Event.LOGOUT): State.LOGOUT,
}


def allowed(state: State, command: type[c.Command]) -> bool:
    """Whether `command` may run in `state` (else the session answers BAD)."""
    return command in ALLOWED[state]


def transition(state: State, event: Event) -> State:
    """The state after `event`; IllegalTransition if the table has no such edge."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event.value} in state {state.value}") from None
