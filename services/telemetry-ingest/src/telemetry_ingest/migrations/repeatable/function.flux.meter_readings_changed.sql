-- Keeps the meter rollups current with every change to the readings (trigger.flux.meter_rollups.sql). Bulk ingest,
-- which sets gridloop.rollups = 'deferred', only marks the touched (device, period) pairs for the refresher;
-- every other writer refreshes them in the same statement. A reorder (gridloop.reordering) changes nothing.
CREATE OR REPLACE FUNCTION flux.meter_readings_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
BEGIN
    IF current_setting('gridloop.reordering', true) = 'on' THEN
        RETURN NULL;  -- ingest.reorder_readings_day moves rows without changing them
    END IF;
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
        -- An insert adds readings and never empties a bucket: no bucket to prune, and (see the refresh) the
        -- deltas computed with the buckets need no second look.
        PERFORM flux.refresh_meter_rollups(array_agg(touched.device_id), array_agg(touched.period_start),
                                           prune_emptied => false)
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

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.meter_readings_changed() FROM PUBLIC;
