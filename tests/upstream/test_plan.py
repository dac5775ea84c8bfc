"""relay.upstream.plan: the DOWN direction's decisions, table-driven."""

from __future__ import annotations

from relay.upstream.plan import (
    Known,
    LocalCopy,
    RemoteCopy,
    RemoteFolder,
    clean_flags,
    plan_folder,
    rematch,
)

SEEN = frozenset({"\\Seen"})
NONE: frozenset[str] = frozenset()


def remote(
    uidvalidity: int,
    flags: dict[int, frozenset[str]],
    *,
    partial: bool = False,
    uids: set[int] | None = None,
) -> RemoteFolder:
    return RemoteFolder(uidvalidity, frozenset(uids if uids is not None else flags), flags, partial)


def test_first_sync_fetches_everything_in_order() -> None:
    plan = plan_folder(0, [], remote(7, {3: NONE, 1: SEEN, 2: NONE}))
    assert plan.fetch == (1, 2, 3) and not plan.flags and not plan.expunged


def test_nothing_changed_is_an_empty_plan() -> None:
    known = [Known(1, 1, SEEN), Known(2, 2, NONE)]
    assert plan_folder(7, known, remote(7, {1: SEEN, 2: NONE})).empty


def test_flag_changed_at_the_operator_wins() -> None:
    known = [Known(1, 10, SEEN), Known(2, 11, NONE)]
    plan = plan_folder(7, known, remote(7, {1: SEEN | {"\\Flagged"}, 2: NONE}))
    assert [(c.known.local_uid, c.flags) for c in plan.flags] == [(10, SEEN | {"\\Flagged"})]


def test_recent_is_not_a_flag_change() -> None:
    known = [Known(1, 1, NONE)]
    assert plan_folder(7, known, remote(7, {1: frozenset({"\\Recent"})})).empty


def test_expunged_at_the_operator_wins_over_a_flag_change() -> None:
    known = [Known(1, 1, NONE), Known(2, 2, NONE)]
    plan = plan_folder(7, known, remote(7, {2: SEEN}))
    assert [k.remote_uid for k in plan.expunged] == [1]
    assert [c.known.remote_uid for c in plan.flags] == [2]


def test_condstore_partial_flags_leave_absent_uids_alone() -> None:
    known = [Known(1, 1, SEEN), Known(2, 2, NONE)]
    plan = plan_folder(7, known, remote(7, {2: SEEN}, partial=True, uids={1, 2, 3}))
    assert plan.fetch == (3,)
    assert [c.known.remote_uid for c in plan.flags] == [2] and not plan.expunged


def test_new_uidvalidity_asks_for_a_rematch_and_nothing_else() -> None:
    plan = plan_folder(7, [Known(1, 1, NONE)], remote(8, {1: NONE, 2: NONE}))
    assert plan.uidvalidity_changed and not plan.fetch and not plan.expunged


def test_rematch_pairs_by_message_id_and_size_and_no_guess_without_id() -> None:
    local = [
        LocalCopy(1, "a@x", 100),
        LocalCopy(2, "a@x", 100),  # two copies of one message
        LocalCopy(3, "b@x", 200),
        LocalCopy(4, None, 50),
        LocalCopy(5, "gone@x", 10),
    ]
    remote_copies = [
        RemoteCopy(11, "a@x", 100, SEEN),
        RemoteCopy(12, "a@x", 100, NONE),
        RemoteCopy(13, "b@x", 201, NONE),  # same id, other size: not the same message
        RemoteCopy(14, None, 50, NONE),
        RemoteCopy(15, "new@x", 5, NONE),
    ]
    result = rematch(local, remote_copies)
    assert [(lc.local_uid, rc.remote_uid) for lc, rc in result.pairs] == [(1, 11), (2, 12)]
    assert result.fetch == (13, 14, 15)
    assert [lc.local_uid for lc in result.dropped] == [3, 4, 5]


def test_clean_flags_canonical_case() -> None:
    assert clean_flags(["\\SEEN", "\\recent", "$Label1"]) == frozenset({"\\Seen", "$Label1"})
