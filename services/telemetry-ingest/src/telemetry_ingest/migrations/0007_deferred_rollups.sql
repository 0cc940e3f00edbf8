-- Bulk ingest marks the (device, 30-minute period) pairs it touched and a refresher recomputes them
-- about once a second, instead of recomputing inside every 200-reading transaction. Rollups then lag
-- ingest by about a second. Everything else (REST inserts, updates, deletes, manual SQL) still refreshes
-- in the same statement, because it does not set gridloop.rollups = 'deferred'.

CREATE TABLE ingest.meter_rollup_dirty (
    device_id uuid NOT NULL,
    period_start timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device_id, period_start)
);

CREATE OR REPLACE FUNCTION flux.meter_readings_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
BEGIN
    IF TG_OP = 'INSERT' AND current_setting('gridloop.rollups', true) = 'deferred' THEN
        -- DO UPDATE, not DO NOTHING: the marker stays row-locked until this transaction commits, so a
        -- refresher cannot take it and recompute on a snapshot that lacks these rows (it skips it, or
        -- waits and finds it re-marked).
        INSERT INTO ingest.meter_rollup_dirty (device_id, period_start)
        SELECT DISTINCT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
        FROM new_readings
        ORDER BY 1, 2
        ON CONFLICT (device_id, period_start) DO UPDATE SET marked_at = clock_timestamp();
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM flux.refresh_meter_rollups(array_agg(touched.device_id), array_agg(touched.period_start))
        FROM (
            SELECT DISTINCT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM new_readings
        ) AS touched (device_id, period_start);
    ELSIF TG_OP = 'UPDATE' THEN
        -- An update may move a reading to another device or bucket: both old and new buckets change.
        PERFORM flux.refresh_meter_rollups(array_agg(touched.device_id), array_agg(touched.period_start))
        FROM (
            SELECT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM new_readings
            UNION
            SELECT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM old_readings
        ) AS touched (device_id, period_start);
    ELSE
        PERFORM flux.refresh_meter_rollups(array_agg(touched.device_id), array_agg(touched.period_start))
        FROM (
            SELECT DISTINCT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM old_readings
        ) AS touched (device_id, period_start);
    END IF;
    RETURN NULL;
END
$$;

-- Take up to max_pairs marked pairs (skipping those a writer still holds) and recompute them.
-- Returns how many pairs were refreshed; call until it returns 0.
CREATE FUNCTION flux.refresh_dirty_meter_rollups(max_pairs integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
DECLARE
    devices uuid[];
    periods timestamptz[];
BEGIN
    WITH taken AS (
        DELETE FROM ingest.meter_rollup_dirty
        WHERE (device_id, period_start) IN (
            SELECT device_id, period_start FROM ingest.meter_rollup_dirty
            ORDER BY marked_at
            LIMIT max_pairs
            FOR UPDATE SKIP LOCKED)
        RETURNING device_id, period_start
    )
    SELECT array_agg(device_id), array_agg(period_start) INTO devices, periods FROM taken;
    IF devices IS NULL THEN
        RETURN 0;
    END IF;
    -- A new statement, so a new snapshot: it sees every writer that committed before the markers were taken.
    PERFORM flux.refresh_meter_rollups(devices, periods);
    RETURN cardinality(devices);
END
$$;

REVOKE ALL ON FUNCTION flux.refresh_dirty_meter_rollups(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.refresh_dirty_meter_rollups(integer) TO service_role;
