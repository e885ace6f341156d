-- wrk script for bench/run.sh: PUT of a text-format body (by default the 4 bytes "m 1\n") to
-- distinct groups /metrics/job/bench_<n> (by default 10,000), cycling, over keep-alive connections
-- (wrk's HTTP/1.1 default).
--
--   wrk -t1 -c16 -d10s -s bench/put.lua http://127.0.0.1:PORT -- <expected status> [groups] [body bytes] [rate]
--
-- With a rate (requests per second of each wrk thread; 0 or absent: none) the requests are paced
-- on a fixed schedule instead of sent as soon as a connection is free: each one takes the next
-- free slot of the schedule and waits for it (wrk's delay()), so the rate does not depend on how
-- fast the server answers as long as a connection is free when a slot comes. A server that cannot
-- keep up falls behind the schedule, and the run achieves less than the rate: run.sh checks it.
--
-- wrk itself only reports statuses >= 400 ("Non-2xx or 3xx responses"), so a redirect listener
-- that answered 200, 404 or 503 would look healthy. Every response is checked here against the
-- expected status and done() prints one line "BENCH_JSON {...}" that run.sh parses; a wrong
-- status fails the run there.

local GROUPS = 10000
local BODY = "m 1\n"
-- Above this many groups the paths are built per request instead of once (memory of wrk).
local PREFORMAT_MAX = 100000

-- Each thread has its own Lua state; setup() runs in the main state, so it keeps the thread
-- objects to read their counters back in done().
local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local requests = {}
local next_index
local expected
-- Pacing: seconds between two requests of this thread (nil: not paced), and the next free slot.
local interval
local next_slot
-- How far behind the schedule a thread may be and still catch up (a stall of the server, or of
-- wrk itself on a busy machine): beyond that, the missed slots are dropped and the run falls
-- short of the rate.
local CATCH_UP_S = 1.0
-- Lua has no wall clock finer than a second: pacing reads CLOCK_MONOTONIC through LuaJIT's ffi
-- (wrk is built on LuaJIT), set up only when paced.
local ffi, now_ts
local CLOCK_MONOTONIC = 1

local function now_s()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) + tonumber(now_ts.tv_nsec) * 1e-9
end

-- Globals, not locals: done() reads them with thread:get().
unexpected = 0
statuses = {}

-- The milliseconds to wait before the next request: until the next free slot of the schedule.
local function paced_delay()
  local now = now_s()
  if next_slot == nil or next_slot < now - CATCH_UP_S then
    next_slot = now
  end
  local wait_ms = (next_slot - now) * 1000
  next_slot = next_slot + interval
  return wait_ms > 0 and wait_ms or 0
end

function init(args)
  expected = tonumber(args[1])
  if expected == nil then
    error("put.lua: pass the expected status after --, e.g. -- 307")
  end
  GROUPS = tonumber(args[2] or GROUPS)
  local size = tonumber(args[3] or #BODY)
  local rate = tonumber(args[4] or 0)
  if rate > 0 then
    interval = 1.0 / rate
    ffi = require("ffi")
    ffi.cdef [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clock, bench_timespec *t);
    ]]
    now_ts = ffi.new("bench_timespec")
    -- wrk paces only a script that has a global delay() once init() ran (checked in thread 1's
    -- state; every thread is given the same arguments).
    delay = paced_delay
  end
  if size > #BODY then
    -- Still valid text format: the sample, then one comment line as long as needed.
    BODY = BODY .. "#" .. string.rep("x", size - #BODY - 2) .. "\n"
  end
  -- Pre-formatted once: building the request per call would cost the load generator CPU that
  -- it shares with Envoy on a small machine.
  if GROUPS <= PREFORMAT_MAX then
    for n = 0, GROUPS - 1 do
      requests[n + 1] = wrk.format("PUT", "/metrics/job/bench_" .. n, nil, BODY)
    end
  end
  -- Threads start at different groups so that they do not push the same group in lockstep.
  next_index = ((thread_index or 0) * 7919) % GROUPS
end

function request()
  next_index = next_index % GROUPS + 1
  return requests[next_index] or wrk.format("PUT", "/metrics/job/bench_" .. (next_index - 1), nil, BODY)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= expected then
    unexpected = unexpected + 1
  end
end

local function json_value(v)
  if type(v) == "table" then
    local parts = {}
    for k, x in pairs(v) do
      table.insert(parts, string.format("%q:%s", tostring(k), json_value(x)))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif type(v) == "number" then
    return string.format("%.17g", v)
  end
  return string.format("%q", tostring(v))
end

function done(summary, latency, _requests)
  local all_statuses, all_unexpected = {}, 0
  for _, t in ipairs(threads) do
    all_unexpected = all_unexpected + (t:get("unexpected") or 0)
    for status, count in pairs(t:get("statuses") or {}) do
      all_statuses[status] = (all_statuses[status] or 0) + count
    end
  end
  local e = summary.errors
  local result = {
    requests = summary.requests,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors = { connect = e.connect, read = e.read, write = e.write, timeout = e.timeout },
    unexpected_status = all_unexpected,
    statuses = all_statuses,
    latency_us = {
      mean = latency.mean,
      stdev = latency.stdev,
      max = latency.max,
      p50 = latency:percentile(50),
      p90 = latency:percentile(90),
      p99 = latency:percentile(99),
      p999 = latency:percentile(99.9),
    },
  }
  io.write("BENCH_JSON ", json_value(result), "\n")
end
