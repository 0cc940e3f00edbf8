-- Rewrites one closed UTC day of a readings table in (device_id, time) order, in one transaction: DELETE ...
-- RETURNING, INSERT ... ORDER BY device_id, time; records it in ingest.reordered_days and returns the rows moved
-- (NULL when the day was done already). Readers keep their snapshot (no lock beyond ROW EXCLUSIVE), a writer of
-- the same key waits for the move and then finds the row, and every column, id and created_at included, is kept.
-- The rows do not change, so the move must not look like a change: the readings' statement triggers return at
-- once while gridloop.reordering is 'on', set locally here only. No rollup is recomputed and no realtime
-- subscriber hears of "new" rows.
CREATE OR REPLACE FUNCTION ingest.reorder_readings_day(readings_table text, day date)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
DECLARE
    day_start timestamptz := day::timestamp AT TIME ZONE 'UTC';
    moved bigint;
BEGIN
    IF readings_table NOT IN ('mg_meter_readings', 'mg_bess_readings') THEN
        RAISE EXCEPTION 'not a readings table: %', readings_table USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Two movers of the same day would each delete the other's moved rows' originals and insert duplicates
    -- of nothing; one waits for the other and then finds the day done.
    PERFORM pg_advisory_xact_lock(hashtextextended('ingest.reorder_readings_day:' || readings_table || ':' || day, 0));
    IF EXISTS (SELECT FROM ingest.reordered_days AS done WHERE done.table_name = readings_table AND done.day = reorder_readings_day.day) THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('gridloop.reordering', 'on', true);
    EXECUTE format(
        'WITH moved AS (DELETE FROM flux.%1$I WHERE time >= $1 AND time < $1 + interval ''1 day'' RETURNING *) '
        'INSERT INTO flux.%1$I SELECT * FROM moved ORDER BY device_id, time',
        readings_table
    ) USING day_start;
    GET DIAGNOSTICS moved = ROW_COUNT;
    PERFORM set_config('gridloop.reordering', 'off', true);
    INSERT INTO ingest.reordered_days (table_name, day, row_count) VALUES (readings_table, day, moved);
    RETURN moved;
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION ingest.reorder_readings_day(text, date) FROM PUBLIC;
