-- The take of the rollup markers (0013) without JIT compilation.
--
-- enable_seqscan = off does not forbid a sequential scan; it adds 10^10 to its estimated cost. The take's
-- subquery has no other way to read the markers' table, so every call's estimated cost passed jit_above_cost
-- (100,000) and jit_inline_above_cost / jit_optimize_above_cost (500,000), and PostgreSQL compiled the
-- statement with LLVM, inlining and optimisation included, on every call: 52 ms of JIT in a 53 ms statement
-- that found no marker, 70-107 ms per refresher pass on an idle system. The refresher calls it once a second
-- in every replica, so an idle telemetry-ingest kept 7-10% of a core busy, in bursts that landed in the API's
-- latency tail. jit = off for this one function (refresh_meter_rollups has had it since 0011, for the same
-- kind of reason).

ALTER FUNCTION ingest.take_rollup_markers(integer, interval) SET jit = off;
