-- Takes (deletes and returns) up to max_pairs rollup markers at least min_age old, oldest first, skipping those a
-- writer still holds. By ctid: a queue table's statistics are always wrong, and with them the planner chose
-- plans whose cost grew with the queue; enable_seqscan = off keeps the take on the primary key.
CREATE OR REPLACE FUNCTION ingest.take_rollup_markers(max_pairs integer, min_age interval)
RETURNS TABLE (device_id uuid, period_start timestamptz)
LANGUAGE sql
SET search_path = pg_catalog, ingest
SET enable_seqscan = off
-- enable_seqscan = off does not forbid a sequential scan, it adds 10^10 to its estimated cost: every call's
-- estimate would pass the JIT thresholds and be compiled with LLVM, costing far more than the take itself.
SET jit = off
AS $$
    DELETE FROM ingest.meter_rollup_dirty
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM ingest.meter_rollup_dirty
        WHERE first_marked_at <= clock_timestamp() - min_age
        ORDER BY first_marked_at
        LIMIT max_pairs
        FOR UPDATE SKIP LOCKED))
    RETURNING device_id, period_start;
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION ingest.take_rollup_markers(integer, interval) FROM PUBLIC;
