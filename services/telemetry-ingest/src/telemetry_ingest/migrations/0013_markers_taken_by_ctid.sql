-- The refresher takes its rollup markers by ctid, in a plan no statistics can turn quadratic.
--
-- 0011 took them with DELETE ... WHERE (device_id, period_start) IN (SELECT ... LIMIT n FOR UPDATE SKIP
-- LOCKED). The markers' table is a queue: tens of thousands of rows during a burst, none a minute later.
-- Statistics taken when it was all but empty (a VACUUM after a drain that kept the last page: 1 row in 500
-- pages) make the planner expect one marker, and it joined the two sides with a nested loop that ran the
-- locking subquery again for every marker: taking 5,000 of 30,000 markers so took 104 s (123 M join
-- comparisons). In a 10 M-reading benchmark run every refresh then hit the 30 s command timeout and was
-- retried with the same cached plan: the rollups stopped, and a backend kept a core busy until the end.
--
-- Now the subquery runs once (ARRAY(...) is an InitPlan) and the rows it locked are deleted by their ctid.
-- Sequential scans are off for this one statement (its own function, so the setting reaches nothing else):
-- a table believed small would otherwise be scanned whole with ctid = ANY(...) as a filter, which compares
-- every row with every taken ctid. So the DELETE is a TID scan whatever the statistics say (the subquery
-- still reads the table once, as it has no other way): 0.14 s for the same 5,000 of 30,000 markers. It
-- also takes at most max_pairs markers; the rescanned subquery could lock and delete more. A row locked by
-- the subquery cannot be updated or moved until the transaction ends, so its ctid stays valid for the
-- DELETE; a marker the DELETE does not find stays for the next pass, so nothing is lost.

CREATE FUNCTION ingest.take_rollup_markers(max_pairs integer, min_age interval)
RETURNS TABLE (device_id uuid, period_start timestamptz)
LANGUAGE sql
SET search_path = pg_catalog, ingest
SET enable_seqscan = off
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

REVOKE ALL ON FUNCTION ingest.take_rollup_markers(integer, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION flux.refresh_dirty_meter_rollups(max_pairs integer, min_age interval)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
DECLARE
    devices uuid[];
    periods timestamptz[];
BEGIN
    SELECT array_agg(taken.device_id), array_agg(taken.period_start) INTO devices, periods
    FROM ingest.take_rollup_markers(max_pairs, min_age) AS taken;
    IF devices IS NULL THEN
        RETURN 0;
    END IF;
    -- A new statement, so a new snapshot: it sees every writer that committed before the markers were taken.
    PERFORM flux.refresh_meter_rollups(devices, periods, prune_emptied => false);
    RETURN cardinality(devices);
END
$$;

-- 0007's one-argument form (everything marked, settled or not) had the same take; it is now the above with
-- min_age 0, so there is one take to keep right.
CREATE OR REPLACE FUNCTION flux.refresh_dirty_meter_rollups(max_pairs integer DEFAULT 5000)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
    SELECT flux.refresh_dirty_meter_rollups(max_pairs, interval '0 seconds');
$$;
