-- Recomputes the (device, period) pairs bulk ingest marked, up to max_pairs, oldest first, skipping those a
-- writer still holds, and returns how many it took. min_age leaves markers younger than that alone, so a period
-- touched every few seconds is recomputed once it settles rather than every time. The one-argument form takes
-- everything marked, settled or not (min_age 0), so there is one take to keep right.
CREATE OR REPLACE FUNCTION flux.refresh_dirty_meter_rollups(max_pairs integer DEFAULT 5000)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
    SELECT flux.refresh_dirty_meter_rollups(max_pairs, interval '0 seconds');
$$;

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

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.refresh_dirty_meter_rollups(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flux.refresh_dirty_meter_rollups(integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.refresh_dirty_meter_rollups(integer) TO service_role;
GRANT EXECUTE ON FUNCTION flux.refresh_dirty_meter_rollups(integer, interval) TO service_role;
