"""gateway.revocations: what an ended session is remembered by, for how long, and across workers."""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.revocations import POLL_INTERVAL, Revocation, Revocations, SessionRef

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def ref(**changes) -> SessionRef:
    values = dict(id="s-1", provider="corp", psid="op-sid", psub="op-sub", started=NOW - 100, user="alice")
    values.update(changes)
    return SessionRef(**values)


@pytest.mark.parametrize("entry, ended", [
    (Revocation("id", "s-1", until=NOW + 60), True),
    (Revocation("id", "s-2", until=NOW + 60), False),
    (Revocation("psid", "op-sid", "corp", until=NOW + 60), True),
    (Revocation("psid", "op-sid", "other", until=NOW + 60), False),  # another provider's session
    (Revocation("sub", "op-sub", "corp", before=NOW, until=NOW + 60), True),
    (Revocation("sub", "op-sub", "corp", before=NOW - 200, until=NOW + 60), False),  # signed in again since
    (Revocation("user", "alice", before=NOW, until=NOW + 60), True),
    (Revocation("user", "bob", before=NOW, until=NOW + 60), False),
    (Revocation("id", "s-1", until=NOW - 1), False),  # past the longest the session could have lived
])
def test_what_an_entry_ends(entry: Revocation, ended: bool) -> None:
    revocations = Revocations(clock=Clock(), path="")
    revocations.add(entry)
    assert revocations.ended(ref()) is ended
    assert revocations.matches(entry, ref()) is (ended or entry.until < NOW)


def test_listeners_hear_each_entry_once() -> None:
    heard = []
    revocations = Revocations(clock=Clock(), path="")
    revocations.listen(heard.append)
    entry = Revocation("id", "s-1", until=NOW + 60)
    revocations.add(entry)
    revocations.add(entry)
    revocations.received({"kind": "id", "value": "s-1", "until": NOW + 60})  # the same, from another instance
    revocations.received({"kind": "bogus", "value": "x"})
    revocations.received("not an entry")
    assert heard == [entry]


def test_workers_share_entries_through_the_file(tmp_path) -> None:
    path = str(tmp_path / "revocations")
    clock = Clock()
    one, two = Revocations(clock=clock, path=path), Revocations(clock=clock, path=path)
    heard = []
    two.listen(heard.append)

    async def scenario() -> None:
        two.start()
        one.add(Revocation("user", "alice", before=NOW, until=NOW + 60))
        for _ in range(20):
            if heard:
                break
            await asyncio.sleep(POLL_INTERVAL / 2)
        two.stop()

    asyncio.run(scenario())
    assert [e.value for e in heard] == ["alice"] and two.ended(ref())
    assert os.stat(path).st_mode & 0o777 == 0o600
    late = Revocations(clock=clock, path=path)  # a restarted worker knows what ended before it
    assert late.ended(ref())


def test_a_partly_written_line_waits_and_garbage_is_skipped(tmp_path) -> None:
    path = tmp_path / "revocations"
    path.write_bytes(b'not json\n{"kind": "id", "value": "s-1", "until": 1800000060}\n{"kind": "id", "val')
    revocations = Revocations(clock=Clock(), path=str(path))
    assert revocations.ended(ref())
    with open(path, "ab") as fh:
        fh.write(b'ue": "s-9", "until": 1800000060}\n')
    revocations._read_new(notify=True)
    assert revocations.ended(ref(id="s-9"))
