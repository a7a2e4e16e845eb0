"""Every Redis key and channel the replicas share, in one place (docs/deploy.md lists them), and the two small
Lua scripts that make shared writes safe to repeat or to race.
"""
from __future__ import annotations

from dataclasses import dataclass

# Appends a final to a transcript stream unless that session's segment is there already: a batch written again
# after a lost reply, or a final made again by a resumed session, never doubles a line.
# Both keys then live `ttl` ms after the last append (0: until deleted).
# KEYS: stream, hash of the last segment per session. ARGV: session, segment, maxlen, final (JSON), ttl (ms).
APPEND_FINAL = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'final', ARGV[4])
if tonumber(ARGV[5]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return 1
"""

# Takes over a resumable session: sets the new record only if the key still holds what the taker read, so that
# two reconnects racing for one session cannot both resume it. KEYS: resume key. ARGV: expected, new, ttl (ms).
CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# A replica asked to let go of a session it does not have live (it restarted under the same name, or the session
# ended here meanwhile) marks its live record held, so the taker need not wait. KEYS: resume key. ARGV: replica.
DISOWN = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec.owner ~= ARGV[1] or rec.phase ~= 'live' then return 0 end
rec.phase = 'held'
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return 1
"""

# Caption outputs (outputs.py). Shares an output: its definition, its room in the set of rooms with outputs, its
# progress starting after the room's last final (an output added mid-meeting sends what comes from now), and its
# lease, taken by the replica that made it. An id there already (a fixed output, defined by every replica that
# starts) is left as it is. KEYS: definitions, rooms, room stream, progress, lease.
# ARGV: id, definition, room, max per room, progress (JSON), replica, lease ttl (ms). Returns 1, 2 (there), 0 (full).
DEFINE_OUTPUT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 2 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
local p = cjson.decode(ARGV[5])
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if last[1] then p.cursor = last[1][1] end
redis.call('SET', KEYS[4], cjson.encode(p))
redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[7])
return 1
"""

# Takes an output's lease if it is free, or renews it if this replica holds it; never for an output removed.
# KEYS: lease, definitions. ARGV: replica, ttl (ms), id.
TAKE_LEASE = """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then return 0 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Writes an output's progress only while this replica holds its lease (a fence: a holder whose lease expired, was
# taken over or deleted learns it here, before it posts). KEYS: lease, progress. ARGV: replica, progress.
FENCED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

# Lets go of a lease this replica holds (shutdown: another replica takes it at its next heartbeat).
# KEYS: lease. ARGV: replica.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# Removes an output everywhere: definition, progress and lease (its holder's next fenced write fails).
# KEYS: definitions, rooms, progress, lease. ARGV: id, room.
UNDEFINE_OUTPUT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3], KEYS[4])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class Keys:
    prefix: str

    def finals(self, kind: str, name: str) -> str:
        """The transcript stream of a session (kind "sessions") or a room ("rooms")."""
        return f"{self.prefix}:finals:{kind}:{name}"

    def last_segments(self, kind: str, name: str) -> str:
        return f"{self.prefix}:finals-last:{kind}:{name}"

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

    def room_of_channel(self, channel: str) -> str | None:
        head = f"{self.prefix}:room:"
        return channel[len(head):] if channel.startswith(head) else None

    def control(self, replica: str) -> str:
        """A replica's own channel: other replicas ask it to release a session there."""
        return f"{self.prefix}:control:{replica}"

    def resume(self, session: str) -> str:
        return f"{self.prefix}:resume:{session}"

    def alive(self, replica: str) -> str:
        return f"{self.prefix}:replica:{replica}"

    def speakers(self, room: str) -> str:
        return f"{self.prefix}:speakers:{room}"

    def outputs(self, room: str) -> str:
        """A room's caption outputs: hash id -> definition (JSON, with the URL: a credential)."""
        return f"{self.prefix}:outputs:{room}"

    def output_rooms(self) -> str:
        return f"{self.prefix}:outputs-rooms"

    def output_lease(self, room: str, output_id: str) -> str:
        return f"{self.prefix}:output-lease:{room}:{output_id}"

    def output_progress(self, room: str, output_id: str) -> str:
        return f"{self.prefix}:output-progress:{room}:{output_id}"
