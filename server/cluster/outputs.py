"""Caption outputs shared by the replicas (outputs/shared.py's SharedOutputs, over Redis): every replica knows
every output, exactly one delivers it at a time, and a replica killed mid-meeting neither doubles nor skips a
caption on it.

- Definitions: a hash per room (id -> kind, url, lang, secret; Redis is the deployment's trusted store) and a set
  of the rooms that have outputs, written by the API's add and remove on any replica (keys.DEFINE_OUTPUT,
  UNDEFINE_OUTPUT).
- Who delivers: a lease per output, `SET … PX` with the replica's name, lasting 3 heartbeats like presence. The
  replica that adds an output takes its lease at once; every heartbeat each replica renews the leases it holds
  and tries to take free ones (keys.TAKE_LEASE, atomic): a dead holder's outputs are taken over within ~3
  heartbeats. A holder that fails to renew, or finds its output removed, stops its sender at once.
- What it delivers: the room's shared transcript stream (the finals of every replica, in the room's order), read
  from the output's cursor, not the local Room (which sees only rooms this replica has viewers or speakers in).
  A caption's age counts from when its final was kept (the line's `time`), so captions a new holder comes to
  late are dropped and counted past `outputs.max_age_s`, never sent late.
- Progress: one JSON record per output (shared.Progress), written by the holder's sender before each post
  ("pending") and after it ("done"), fenced by the lease (keys.FENCED_SET): a write that finds the lease gone
  stops the sender before it posts. A new holder goes on from the record: the pending post first, with its seq.
Every replica re-reads the definitions and progress each heartbeat: GET /v1/rooms/NAME/outputs on any replica
shows the same (as of that heartbeat, plus its own adds and removes at once). With Redis away nothing is
delivered by anyone who cannot write its progress: the fence fails, the sender stops, the lease is taken again
(by whichever replica) once Redis is back.
"""
from __future__ import annotations

import asyncio
import json
import logging

from ..core.events import Final
from ..delivery.records import caption_from_record
from ..outputs.contracts import OutgoingCaption
from ..outputs.guard import RefusedURL
from ..outputs.shared import Deliver, OutputSpec, Progress, Sender, SharedUnavailable
from .keys import DEFINE_OUTPUT, FENCED_SET, RELEASE_LEASE, TAKE_LEASE, UNDEFINE_OUTPUT, Keys
from .link import FAILURES, Link

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a holder looks for new finals in the room's stream when it found none
PAGE = 100  # stream entries read per call
READ_AHEAD = 200  # captions queued at the sender before the holder stops reading ahead


class SharedRoomOutputs:
    def __init__(self, link: Link, keys: Keys, replica: str, heartbeat_s: float):
        self._link, self._keys, self.replica = link, keys, replica
        self._heartbeat_s = heartbeat_s
        self.ttl_ms = int(heartbeat_s * 3000)
        self._listed: dict[str, dict[str, tuple[OutputSpec, Progress | None]]] = {}  # room -> id -> as last read
        self._held: dict[tuple[str, str], Holder] = {}
        self._deliver: Deliver | None = None
        self._task: asyncio.Task | None = None

    # -- SharedOutputs -----------------------------------------------------------------------------------------

    async def define(self, room: str, output_id: str, spec: OutputSpec, max_per_room: int) -> bool:
        k = self._keys
        try:
            done = await self._link.call(
                self._link.client.eval, DEFINE_OUTPUT, 5, k.outputs(room), k.output_rooms(), k.finals("rooms", room),
                k.output_progress(room, output_id), k.output_lease(room, output_id), output_id, spec.to_json(), room,
                max_per_room, Progress(holder=self.replica).to_json(), self.replica, self.ttl_ms)
        except FAILURES as exc:
            raise SharedUnavailable(f"outputs are shared through Redis, which did not answer: try again ({exc})")
        if done == 1:
            self._listed.setdefault(room, {})[output_id] = (spec, Progress(holder=self.replica))
            self._hold(room, output_id, spec)
        return bool(done)

    async def undefine(self, room: str, output_id: str) -> bool:
        k = self._keys
        try:
            removed = await self._link.call(self._link.client.eval, UNDEFINE_OUTPUT, 4, k.outputs(room),
                                            k.output_rooms(), k.output_progress(room, output_id),
                                            k.output_lease(room, output_id), output_id, room)
        except FAILURES as exc:
            raise SharedUnavailable(f"outputs are shared through Redis, which did not answer: try again ({exc})")
        self._listed.get(room, {}).pop(output_id, None)
        await self._let_go((room, output_id))
        return bool(removed)

    def listed(self, room: str) -> list[tuple[str, OutputSpec, Progress | None]]:
        return [(output_id, spec, progress) for output_id, (spec, progress) in self._listed.get(room, {}).items()]

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._task = asyncio.create_task(self._heartbeats(), name="outputs-leases")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        held = list(self._held)
        for key in held:
            await self._let_go(key)
        if held and self._link.up:  # let go of the leases: another replica takes them at its next heartbeat
            try:
                pipe = self._link.client.pipeline(transaction=False)
                for room, output_id in held:
                    pipe.eval(RELEASE_LEASE, 1, self._keys.output_lease(room, output_id), self.replica)
                await self._link.call(pipe.execute)
            except FAILURES:
                pass  # they expire within 3 heartbeats

    # -- leases ------------------------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            if self._link.up:
                try:
                    await self._beat()
                except FAILURES:
                    pass  # Redis away (the link logged it); fenced writes stop the senders meanwhile
            await asyncio.sleep(self._heartbeat_s)

    async def _beat(self) -> None:
        """Reads every output and its progress, renews the leases held here, takes free ones."""
        client, k = self._link.client, self._keys
        held_before = set(self._held)  # outputs added here while this beat reads are kept as they are
        rooms = sorted(r.decode() for r in await self._link.call(client.smembers, k.output_rooms()))
        pipe = client.pipeline(transaction=False)
        for room in rooms:
            pipe.hgetall(k.outputs(room))
        found = [(room, output_id.decode(), OutputSpec.from_json(raw))
                 for room, defs in zip(rooms, await self._link.call(pipe.execute)) for output_id, raw in defs.items()]
        pipe = client.pipeline(transaction=False)
        for room, output_id, _ in found:
            pipe.get(k.output_progress(room, output_id))
            pipe.eval(TAKE_LEASE, 2, k.output_lease(room, output_id), k.outputs(room), self.replica, self.ttl_ms,
                      output_id)
        answers = await self._link.call(pipe.execute) if found else []
        listed: dict[str, dict[str, tuple[OutputSpec, Progress | None]]] = {}
        for (room, output_id, spec), raw, ours in zip(found, answers[::2], answers[1::2]):
            listed.setdefault(room, {})[output_id] = (spec, Progress.from_json(raw) if raw else None)
            key = (room, output_id)
            holder = self._held.get(key)
            if not ours:
                if holder is not None:
                    log.warning("room %s: output %s: lease lost; stopping its delivery here", room, output_id)
                    await self._let_go(key)
            elif holder is None or holder.ended:
                self._hold(room, output_id, spec)
        for room, output_id in set(self._held) - held_before:
            if (entry := self._listed.get(room, {}).get(output_id)) is not None:
                listed.setdefault(room, {}).setdefault(output_id, entry)
        self._listed = listed
        for key in [key for key in held_before & set(self._held) if key[1] not in listed.get(key[0], {})]:
            await self._let_go(key)  # removed (on another replica)

    def _hold(self, room: str, output_id: str, spec: OutputSpec) -> None:
        assert self._deliver is not None, "start() first"
        log.info("room %s: output %s (%s %s) delivered from this replica", room, output_id, spec.kind, spec.host)
        self._held[(room, output_id)] = Holder(self, room, output_id, spec, self._deliver)

    async def _let_go(self, key: tuple[str, str]) -> None:
        holder = self._held.pop(key, None)
        if holder is not None:
            await holder.stop()

    async def journal(self, room: str, output_id: str, progress: Progress) -> bool:
        """The holder's sender records its progress: only while this replica holds the lease."""
        progress.holder = self.replica
        k = self._keys
        try:
            ok = await self._link.call(self._link.client.eval, FENCED_SET, 2, k.output_lease(room, output_id),
                                       k.output_progress(room, output_id), self.replica, progress.to_json())
        except FAILURES:
            return False
        if ok and output_id in self._listed.get(room, {}):
            self._listed[room][output_id] = (self._listed[room][output_id][0], progress)
        return bool(ok)


class Holder:
    """One output delivered from this replica: its sender, fed from the room's stream after the shared cursor."""

    def __init__(self, outputs: SharedRoomOutputs, room: str, output_id: str, spec: OutputSpec, deliver: Deliver):
        self._outputs, self.room, self.output_id, self.spec = outputs, room, output_id, spec
        self._deliver = deliver
        self._sender: Sender | None = None
        self.failed = False  # a failed output stays held (nobody retries it) and does nothing
        self._task = asyncio.create_task(self._run(), name=f"output {room} {output_id}")

    @property
    def ended(self) -> bool:
        """Stopped by itself (lease lost in a write, Redis away): to be taken again. A failed one is still held."""
        return self._task.done() and not self.failed

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        link, keys = self._outputs._link, self._outputs._keys
        try:
            raw = await link.call(link.client.get, keys.output_progress(self.room, self.output_id))
            progress = Progress.from_json(raw) if raw else Progress()
            if progress.state == "failed":
                self.failed = True
                return
            sender = self._sender = self._deliver(self.spec, progress, self._journal)
        except FAILURES:
            return
        except RefusedURL as exc:  # this replica's outputs.allowed_hosts differs from the one that added it
            log.error("room %s: output %s cannot be delivered from here: %s", self.room, self.output_id, exc)
            self.failed = True
            return
        await sender.start()
        cursor = progress.cursor
        stream = keys.finals("rooms", self.room)
        try:
            while sender.running:
                if sender.queued >= READ_AHEAD:
                    await asyncio.sleep(POLL_S)
                    continue
                read = await link.call(link.client.xread, {stream: cursor}, count=PAGE)
                entries = [entry for _, page in read or () for entry in page]
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    sender.offer(outgoing(self.room, cursor, fields), cursor)
                if len(entries) < PAGE:
                    await asyncio.sleep(POLL_S)
            self.failed = sender.state == "failed"
        except FAILURES:
            pass  # Redis away: this holder ends; the lease is taken again (here or elsewhere) once it is back
        finally:
            await sender.close()

    async def _journal(self, progress: Progress) -> bool:
        return await self._outputs.journal(self.room, self.output_id, progress)


def outgoing(room: str, entry_id: str, fields: dict) -> OutgoingCaption:
    """A final from the room's stream, aged from when it was kept (its line's `time`; else the entry's id)."""
    line = json.loads(fields[b"final"])
    final = caption_from_record(line)
    assert isinstance(final, Final)  # transcript streams hold finals only
    made_at = float(line.get("time") or int(entry_id.split("-")[0]) / 1000)
    return OutgoingCaption.of(room, final, made_at)
