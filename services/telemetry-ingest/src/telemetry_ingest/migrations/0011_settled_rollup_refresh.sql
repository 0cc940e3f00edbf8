-- Rollup maintenance that stays cheap as the readings table grows, and that settles before it recomputes.
--
-- 1. flux.refresh_meter_rollups (restated from 0006 with two changes): the touched readings are read
--    through a LATERAL subquery that is no longer flattened (OFFSET 0). Flattened, the planner, which
--    guesses 200 rows for unnest() of the touched pairs, chose a hash join over a sequential scan of the
--    whole readings partition: 77 of 213 ms for 2,000 touched pairs on a 244k-row partition, and growing
--    with the table. Now each pair is one (device_id, time) index range scan: 6 ms for the same pairs.
--    And a third argument, prune_emptied (default true), lets the deferred path skip looking for buckets
--    that lost all their readings: markers come from inserts only, and a delete or update refreshes its
--    buckets in its own statement, so that search (two index probes per pair, ~15% of a refresh) never
--    finds anything there. Callers with two arguments are unchanged.
-- 2. Deferred markers remember when they were first set, and flux.refresh_dirty_meter_rollups can leave
--    markers younger than min_age alone. A device reporting every 5 s touches its 30-minute period 360
--    times, and each refresh recomputes the whole period: refreshing a period at most every min_age
--    instead of every second divides that work by min_age, for rollups that lag ingest by about min_age.

DROP FUNCTION flux.refresh_meter_rollups(uuid[], timestamptz[]);

CREATE FUNCTION flux.refresh_meter_rollups(
    touched_devices uuid[],
    touched_periods timestamptz[],
    prune_emptied boolean DEFAULT true
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER   -- writers of readings need no rights on the rollup table
SET search_path = pg_catalog, flux
-- The statement's estimated cost grows with the rollup table and passed jit_above_cost: JIT compiling
-- its ~180 expressions took ~250 ms per call, far more than running them (a 200-row batch: ~10 ms).
SET jit = off
AS $$
BEGIN
    -- As in 0002: a lock per (device, period), in a fixed order, so that concurrent writers of one bucket
    -- take turns and the second recomputes on a snapshot that includes the first one's rows.
    PERFORM pg_advisory_xact_lock(
        hashtextextended('flux.meter_reading_rollups:' || touched.device_id::text || ':'
                         || extract(epoch FROM touched.period_start)::bigint::text, 0))
    FROM (
        SELECT DISTINCT pair.device_id, pair.period_start
        FROM unnest(touched_devices, touched_periods) AS pair (device_id, period_start)
        ORDER BY 1, 2
    ) AS touched;

    WITH touched AS (
        SELECT DISTINCT pair.device_id, pair.period_start
        FROM unnest(touched_devices, touched_periods) AS pair (device_id, period_start)
    ),
    -- The touched readings, each with the latest earlier non-null value of every counter as
    -- [epoch, value] (unchanged from 0002), and the start of its 5-minute bucket.
    ordered AS (
        SELECT
            readings.device_id,
            readings.time,
            touched.period_start,
            date_bin(interval '5 minutes', readings.time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS time_b,
            extract(epoch FROM readings.time)::double precision AS epoch,
            readings.frequency,
            readings.voltage_line_average,
            readings.current_phase_a,
            readings.current_phase_b,
            readings.current_phase_c,
            readings.current_phase_average,
            readings.power_phase_a_active,
            readings.power_phase_b_active,
            readings.power_phase_c_active,
            readings.power_total_active,
            readings.power_total_reactive,
            readings.power_total_apparent,
            readings.power_factor_total,
            readings.energy_imported_active,
            readings.energy_exported_active,
            readings.energy_imported_phase_a_active,
            readings.energy_exported_phase_a_active,
            readings.energy_imported_phase_b_active,
            readings.energy_exported_phase_b_active,
            readings.energy_imported_phase_c_active,
            readings.energy_exported_phase_c_active,
            readings.energy_imported_reactive,
            readings.energy_exported_reactive,
            readings.energy_imported_apparent,
            readings.energy_exported_apparent,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_active])
                FILTER (WHERE readings.energy_imported_active IS NOT NULL) OVER earlier AS energy_imported_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_active])
                FILTER (WHERE readings.energy_exported_active IS NOT NULL) OVER earlier AS energy_exported_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_phase_a_active])
                FILTER (WHERE readings.energy_imported_phase_a_active IS NOT NULL) OVER earlier AS energy_imported_phase_a_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_phase_a_active])
                FILTER (WHERE readings.energy_exported_phase_a_active IS NOT NULL) OVER earlier AS energy_exported_phase_a_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_phase_b_active])
                FILTER (WHERE readings.energy_imported_phase_b_active IS NOT NULL) OVER earlier AS energy_imported_phase_b_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_phase_b_active])
                FILTER (WHERE readings.energy_exported_phase_b_active IS NOT NULL) OVER earlier AS energy_exported_phase_b_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_phase_c_active])
                FILTER (WHERE readings.energy_imported_phase_c_active IS NOT NULL) OVER earlier AS energy_imported_phase_c_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_phase_c_active])
                FILTER (WHERE readings.energy_exported_phase_c_active IS NOT NULL) OVER earlier AS energy_exported_phase_c_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_reactive])
                FILTER (WHERE readings.energy_imported_reactive IS NOT NULL) OVER earlier AS energy_imported_reactive_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_reactive])
                FILTER (WHERE readings.energy_exported_reactive IS NOT NULL) OVER earlier AS energy_exported_reactive_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_apparent])
                FILTER (WHERE readings.energy_imported_apparent IS NOT NULL) OVER earlier AS energy_imported_apparent_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_apparent])
                FILTER (WHERE readings.energy_exported_apparent IS NOT NULL) OVER earlier AS energy_exported_apparent_previous
        FROM touched
        CROSS JOIN LATERAL (
            SELECT * FROM flux.mg_meter_readings AS period_readings
            WHERE period_readings.device_id = touched.device_id
                AND period_readings.time >= touched.period_start
                AND period_readings.time < touched.period_start + interval '30 minutes'
            OFFSET 0
        ) AS readings
        WINDOW earlier AS (
            PARTITION BY readings.device_id ORDER BY readings.time
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        )
    ),
    -- One pass over the readings gives the 5-minute buckets, with what the 30-minute bucket needs of
    -- them: float8 sums and counts of the averaged columns (avg(real) is exactly that sum over that
    -- count), and per counter the resets whose earlier reading lies in the same 30-minute period.
    five AS (
        SELECT
            ordered.device_id,
            ordered.period_start,
            ordered.time_b,
            count(*) AS reading_count,
            sum(ordered.frequency::double precision) AS frequency_sum,
            count(ordered.frequency) AS frequency_count,
            sum(ordered.voltage_line_average::double precision) AS voltage_line_average_sum,
            count(ordered.voltage_line_average) AS voltage_line_average_count,
            sum(ordered.current_phase_a::double precision) AS current_phase_a_sum,
            count(ordered.current_phase_a) AS current_phase_a_count,
            sum(ordered.current_phase_b::double precision) AS current_phase_b_sum,
            count(ordered.current_phase_b) AS current_phase_b_count,
            sum(ordered.current_phase_c::double precision) AS current_phase_c_sum,
            count(ordered.current_phase_c) AS current_phase_c_count,
            sum(ordered.current_phase_average::double precision) AS current_phase_average_sum,
            count(ordered.current_phase_average) AS current_phase_average_count,
            sum(ordered.power_phase_a_active::double precision) AS power_phase_a_active_sum,
            count(ordered.power_phase_a_active) AS power_phase_a_active_count,
            sum(ordered.power_phase_b_active::double precision) AS power_phase_b_active_sum,
            count(ordered.power_phase_b_active) AS power_phase_b_active_count,
            sum(ordered.power_phase_c_active::double precision) AS power_phase_c_active_sum,
            count(ordered.power_phase_c_active) AS power_phase_c_active_count,
            sum(ordered.power_total_active::double precision) AS power_total_active_sum,
            count(ordered.power_total_active) AS power_total_active_count,
            sum(ordered.power_total_reactive::double precision) AS power_total_reactive_sum,
            count(ordered.power_total_reactive) AS power_total_reactive_count,
            sum(ordered.power_total_apparent::double precision) AS power_total_apparent_sum,
            count(ordered.power_total_apparent) AS power_total_apparent_count,
            sum(ordered.power_factor_total::double precision) AS power_factor_total_sum,
            count(ordered.power_factor_total) AS power_factor_total_count,
            CASE WHEN count(ordered.energy_imported_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_imported_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_imported_active]) FILTER (WHERE ordered.energy_imported_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_imported_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_imported_active]) FILTER (WHERE ordered.energy_imported_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_imported_active_previous[2]) FILTER (WHERE ordered.energy_imported_active < ordered.energy_imported_active_previous[2]
                    AND ordered.energy_imported_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_imported_active)
            )::flux.counter_summary END AS energy_imported_active,
            sum(ordered.energy_imported_active_previous[2]) FILTER (WHERE ordered.energy_imported_active < ordered.energy_imported_active_previous[2]
                AND ordered.energy_imported_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_imported_active_period_resets,
            CASE WHEN count(ordered.energy_exported_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_exported_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_exported_active]) FILTER (WHERE ordered.energy_exported_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_exported_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_exported_active]) FILTER (WHERE ordered.energy_exported_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_exported_active_previous[2]) FILTER (WHERE ordered.energy_exported_active < ordered.energy_exported_active_previous[2]
                    AND ordered.energy_exported_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_exported_active)
            )::flux.counter_summary END AS energy_exported_active,
            sum(ordered.energy_exported_active_previous[2]) FILTER (WHERE ordered.energy_exported_active < ordered.energy_exported_active_previous[2]
                AND ordered.energy_exported_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_exported_active_period_resets,
            CASE WHEN count(ordered.energy_imported_phase_a_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_imported_phase_a_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_imported_phase_a_active]) FILTER (WHERE ordered.energy_imported_phase_a_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_imported_phase_a_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_imported_phase_a_active]) FILTER (WHERE ordered.energy_imported_phase_a_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_imported_phase_a_active_previous[2]) FILTER (WHERE ordered.energy_imported_phase_a_active < ordered.energy_imported_phase_a_active_previous[2]
                    AND ordered.energy_imported_phase_a_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_imported_phase_a_active)
            )::flux.counter_summary END AS energy_imported_phase_a_active,
            sum(ordered.energy_imported_phase_a_active_previous[2]) FILTER (WHERE ordered.energy_imported_phase_a_active < ordered.energy_imported_phase_a_active_previous[2]
                AND ordered.energy_imported_phase_a_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_imported_phase_a_active_period_resets,
            CASE WHEN count(ordered.energy_exported_phase_a_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_exported_phase_a_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_exported_phase_a_active]) FILTER (WHERE ordered.energy_exported_phase_a_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_exported_phase_a_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_exported_phase_a_active]) FILTER (WHERE ordered.energy_exported_phase_a_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_exported_phase_a_active_previous[2]) FILTER (WHERE ordered.energy_exported_phase_a_active < ordered.energy_exported_phase_a_active_previous[2]
                    AND ordered.energy_exported_phase_a_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_exported_phase_a_active)
            )::flux.counter_summary END AS energy_exported_phase_a_active,
            sum(ordered.energy_exported_phase_a_active_previous[2]) FILTER (WHERE ordered.energy_exported_phase_a_active < ordered.energy_exported_phase_a_active_previous[2]
                AND ordered.energy_exported_phase_a_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_exported_phase_a_active_period_resets,
            CASE WHEN count(ordered.energy_imported_phase_b_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_imported_phase_b_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_imported_phase_b_active]) FILTER (WHERE ordered.energy_imported_phase_b_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_imported_phase_b_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_imported_phase_b_active]) FILTER (WHERE ordered.energy_imported_phase_b_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_imported_phase_b_active_previous[2]) FILTER (WHERE ordered.energy_imported_phase_b_active < ordered.energy_imported_phase_b_active_previous[2]
                    AND ordered.energy_imported_phase_b_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_imported_phase_b_active)
            )::flux.counter_summary END AS energy_imported_phase_b_active,
            sum(ordered.energy_imported_phase_b_active_previous[2]) FILTER (WHERE ordered.energy_imported_phase_b_active < ordered.energy_imported_phase_b_active_previous[2]
                AND ordered.energy_imported_phase_b_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_imported_phase_b_active_period_resets,
            CASE WHEN count(ordered.energy_exported_phase_b_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_exported_phase_b_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_exported_phase_b_active]) FILTER (WHERE ordered.energy_exported_phase_b_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_exported_phase_b_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_exported_phase_b_active]) FILTER (WHERE ordered.energy_exported_phase_b_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_exported_phase_b_active_previous[2]) FILTER (WHERE ordered.energy_exported_phase_b_active < ordered.energy_exported_phase_b_active_previous[2]
                    AND ordered.energy_exported_phase_b_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_exported_phase_b_active)
            )::flux.counter_summary END AS energy_exported_phase_b_active,
            sum(ordered.energy_exported_phase_b_active_previous[2]) FILTER (WHERE ordered.energy_exported_phase_b_active < ordered.energy_exported_phase_b_active_previous[2]
                AND ordered.energy_exported_phase_b_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_exported_phase_b_active_period_resets,
            CASE WHEN count(ordered.energy_imported_phase_c_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_imported_phase_c_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_imported_phase_c_active]) FILTER (WHERE ordered.energy_imported_phase_c_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_imported_phase_c_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_imported_phase_c_active]) FILTER (WHERE ordered.energy_imported_phase_c_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_imported_phase_c_active_previous[2]) FILTER (WHERE ordered.energy_imported_phase_c_active < ordered.energy_imported_phase_c_active_previous[2]
                    AND ordered.energy_imported_phase_c_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_imported_phase_c_active)
            )::flux.counter_summary END AS energy_imported_phase_c_active,
            sum(ordered.energy_imported_phase_c_active_previous[2]) FILTER (WHERE ordered.energy_imported_phase_c_active < ordered.energy_imported_phase_c_active_previous[2]
                AND ordered.energy_imported_phase_c_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_imported_phase_c_active_period_resets,
            CASE WHEN count(ordered.energy_exported_phase_c_active) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_exported_phase_c_active IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_exported_phase_c_active]) FILTER (WHERE ordered.energy_exported_phase_c_active IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_exported_phase_c_active IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_exported_phase_c_active]) FILTER (WHERE ordered.energy_exported_phase_c_active IS NOT NULL))[2],
                coalesce(sum(ordered.energy_exported_phase_c_active_previous[2]) FILTER (WHERE ordered.energy_exported_phase_c_active < ordered.energy_exported_phase_c_active_previous[2]
                    AND ordered.energy_exported_phase_c_active_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_exported_phase_c_active)
            )::flux.counter_summary END AS energy_exported_phase_c_active,
            sum(ordered.energy_exported_phase_c_active_previous[2]) FILTER (WHERE ordered.energy_exported_phase_c_active < ordered.energy_exported_phase_c_active_previous[2]
                AND ordered.energy_exported_phase_c_active_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_exported_phase_c_active_period_resets,
            CASE WHEN count(ordered.energy_imported_reactive) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_imported_reactive IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_imported_reactive]) FILTER (WHERE ordered.energy_imported_reactive IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_imported_reactive IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_imported_reactive]) FILTER (WHERE ordered.energy_imported_reactive IS NOT NULL))[2],
                coalesce(sum(ordered.energy_imported_reactive_previous[2]) FILTER (WHERE ordered.energy_imported_reactive < ordered.energy_imported_reactive_previous[2]
                    AND ordered.energy_imported_reactive_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_imported_reactive)
            )::flux.counter_summary END AS energy_imported_reactive,
            sum(ordered.energy_imported_reactive_previous[2]) FILTER (WHERE ordered.energy_imported_reactive < ordered.energy_imported_reactive_previous[2]
                AND ordered.energy_imported_reactive_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_imported_reactive_period_resets,
            CASE WHEN count(ordered.energy_exported_reactive) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_exported_reactive IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_exported_reactive]) FILTER (WHERE ordered.energy_exported_reactive IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_exported_reactive IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_exported_reactive]) FILTER (WHERE ordered.energy_exported_reactive IS NOT NULL))[2],
                coalesce(sum(ordered.energy_exported_reactive_previous[2]) FILTER (WHERE ordered.energy_exported_reactive < ordered.energy_exported_reactive_previous[2]
                    AND ordered.energy_exported_reactive_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_exported_reactive)
            )::flux.counter_summary END AS energy_exported_reactive,
            sum(ordered.energy_exported_reactive_previous[2]) FILTER (WHERE ordered.energy_exported_reactive < ordered.energy_exported_reactive_previous[2]
                AND ordered.energy_exported_reactive_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_exported_reactive_period_resets,
            CASE WHEN count(ordered.energy_imported_apparent) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_imported_apparent IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_imported_apparent]) FILTER (WHERE ordered.energy_imported_apparent IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_imported_apparent IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_imported_apparent]) FILTER (WHERE ordered.energy_imported_apparent IS NOT NULL))[2],
                coalesce(sum(ordered.energy_imported_apparent_previous[2]) FILTER (WHERE ordered.energy_imported_apparent < ordered.energy_imported_apparent_previous[2]
                    AND ordered.energy_imported_apparent_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_imported_apparent)
            )::flux.counter_summary END AS energy_imported_apparent,
            sum(ordered.energy_imported_apparent_previous[2]) FILTER (WHERE ordered.energy_imported_apparent < ordered.energy_imported_apparent_previous[2]
                AND ordered.energy_imported_apparent_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_imported_apparent_period_resets,
            CASE WHEN count(ordered.energy_exported_apparent) > 0 THEN ROW(
                min(ordered.time) FILTER (WHERE ordered.energy_exported_apparent IS NOT NULL),
                (min(ARRAY[ordered.epoch, ordered.energy_exported_apparent]) FILTER (WHERE ordered.energy_exported_apparent IS NOT NULL))[2],
                max(ordered.time) FILTER (WHERE ordered.energy_exported_apparent IS NOT NULL),
                (max(ARRAY[ordered.epoch, ordered.energy_exported_apparent]) FILTER (WHERE ordered.energy_exported_apparent IS NOT NULL))[2],
                coalesce(sum(ordered.energy_exported_apparent_previous[2]) FILTER (WHERE ordered.energy_exported_apparent < ordered.energy_exported_apparent_previous[2]
                    AND ordered.energy_exported_apparent_previous[1] >= extract(epoch FROM ordered.time_b)), 0),
                min(ordered.energy_exported_apparent)
            )::flux.counter_summary END AS energy_exported_apparent,
            sum(ordered.energy_exported_apparent_previous[2]) FILTER (WHERE ordered.energy_exported_apparent < ordered.energy_exported_apparent_previous[2]
                AND ordered.energy_exported_apparent_previous[1] >= extract(epoch FROM ordered.period_start)) AS energy_exported_apparent_period_resets
        FROM ordered
        GROUP BY ordered.device_id, ordered.period_start, ordered.time_b
    ),
    -- The 30-minute buckets from their (at most six) 5-minute ones.
    computed AS (
        SELECT
            5::smallint AS bucket_minutes,
            five.device_id,
            five.time_b,
            five.reading_count,
            five.frequency_sum / nullif(five.frequency_count, 0) AS frequency_avg,
            five.voltage_line_average_sum / nullif(five.voltage_line_average_count, 0) AS voltage_line_average_avg,
            five.current_phase_a_sum / nullif(five.current_phase_a_count, 0) AS current_phase_a_avg,
            five.current_phase_b_sum / nullif(five.current_phase_b_count, 0) AS current_phase_b_avg,
            five.current_phase_c_sum / nullif(five.current_phase_c_count, 0) AS current_phase_c_avg,
            five.current_phase_average_sum / nullif(five.current_phase_average_count, 0) AS current_phase_average_avg,
            five.power_phase_a_active_sum / nullif(five.power_phase_a_active_count, 0) AS power_phase_a_active_avg,
            five.power_phase_b_active_sum / nullif(five.power_phase_b_active_count, 0) AS power_phase_b_active_avg,
            five.power_phase_c_active_sum / nullif(five.power_phase_c_active_count, 0) AS power_phase_c_active_avg,
            five.power_total_active_sum / nullif(five.power_total_active_count, 0) AS power_total_active_avg,
            five.power_total_reactive_sum / nullif(five.power_total_reactive_count, 0) AS power_total_reactive_avg,
            five.power_total_apparent_sum / nullif(five.power_total_apparent_count, 0) AS power_total_apparent_avg,
            five.power_factor_total_sum / nullif(five.power_factor_total_count, 0) AS power_factor_total_avg,
            five.energy_imported_active,
            five.energy_exported_active,
            five.energy_imported_phase_a_active,
            five.energy_exported_phase_a_active,
            five.energy_imported_phase_b_active,
            five.energy_exported_phase_b_active,
            five.energy_imported_phase_c_active,
            five.energy_exported_phase_c_active,
            five.energy_imported_reactive,
            five.energy_exported_reactive,
            five.energy_imported_apparent,
            five.energy_exported_apparent
        FROM five
        UNION ALL
        SELECT
            30::smallint,
            five.device_id,
            five.period_start,
            sum(five.reading_count)::bigint,
            sum(five.frequency_sum) / nullif(sum(five.frequency_count), 0),
            sum(five.voltage_line_average_sum) / nullif(sum(five.voltage_line_average_count), 0),
            sum(five.current_phase_a_sum) / nullif(sum(five.current_phase_a_count), 0),
            sum(five.current_phase_b_sum) / nullif(sum(five.current_phase_b_count), 0),
            sum(five.current_phase_c_sum) / nullif(sum(five.current_phase_c_count), 0),
            sum(five.current_phase_average_sum) / nullif(sum(five.current_phase_average_count), 0),
            sum(five.power_phase_a_active_sum) / nullif(sum(five.power_phase_a_active_count), 0),
            sum(five.power_phase_b_active_sum) / nullif(sum(five.power_phase_b_active_count), 0),
            sum(five.power_phase_c_active_sum) / nullif(sum(five.power_phase_c_active_count), 0),
            sum(five.power_total_active_sum) / nullif(sum(five.power_total_active_count), 0),
            sum(five.power_total_reactive_sum) / nullif(sum(five.power_total_reactive_count), 0),
            sum(five.power_total_apparent_sum) / nullif(sum(five.power_total_apparent_count), 0),
            sum(five.power_factor_total_sum) / nullif(sum(five.power_factor_total_count), 0),
            CASE WHEN count((five.energy_imported_active).first_time) > 0 THEN ROW(
                min((five.energy_imported_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_imported_active).first_time), (five.energy_imported_active).first_value])
                    FILTER (WHERE (five.energy_imported_active).first_time IS NOT NULL))[2],
                max((five.energy_imported_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_imported_active).last_time), (five.energy_imported_active).last_value])
                    FILTER (WHERE (five.energy_imported_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_imported_active_period_resets), 0),
                min((five.energy_imported_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_exported_active).first_time) > 0 THEN ROW(
                min((five.energy_exported_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_exported_active).first_time), (five.energy_exported_active).first_value])
                    FILTER (WHERE (five.energy_exported_active).first_time IS NOT NULL))[2],
                max((five.energy_exported_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_exported_active).last_time), (five.energy_exported_active).last_value])
                    FILTER (WHERE (five.energy_exported_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_exported_active_period_resets), 0),
                min((five.energy_exported_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_imported_phase_a_active).first_time) > 0 THEN ROW(
                min((five.energy_imported_phase_a_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_imported_phase_a_active).first_time), (five.energy_imported_phase_a_active).first_value])
                    FILTER (WHERE (five.energy_imported_phase_a_active).first_time IS NOT NULL))[2],
                max((five.energy_imported_phase_a_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_imported_phase_a_active).last_time), (five.energy_imported_phase_a_active).last_value])
                    FILTER (WHERE (five.energy_imported_phase_a_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_imported_phase_a_active_period_resets), 0),
                min((five.energy_imported_phase_a_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_exported_phase_a_active).first_time) > 0 THEN ROW(
                min((five.energy_exported_phase_a_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_exported_phase_a_active).first_time), (five.energy_exported_phase_a_active).first_value])
                    FILTER (WHERE (five.energy_exported_phase_a_active).first_time IS NOT NULL))[2],
                max((five.energy_exported_phase_a_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_exported_phase_a_active).last_time), (five.energy_exported_phase_a_active).last_value])
                    FILTER (WHERE (five.energy_exported_phase_a_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_exported_phase_a_active_period_resets), 0),
                min((five.energy_exported_phase_a_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_imported_phase_b_active).first_time) > 0 THEN ROW(
                min((five.energy_imported_phase_b_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_imported_phase_b_active).first_time), (five.energy_imported_phase_b_active).first_value])
                    FILTER (WHERE (five.energy_imported_phase_b_active).first_time IS NOT NULL))[2],
                max((five.energy_imported_phase_b_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_imported_phase_b_active).last_time), (five.energy_imported_phase_b_active).last_value])
                    FILTER (WHERE (five.energy_imported_phase_b_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_imported_phase_b_active_period_resets), 0),
                min((five.energy_imported_phase_b_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_exported_phase_b_active).first_time) > 0 THEN ROW(
                min((five.energy_exported_phase_b_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_exported_phase_b_active).first_time), (five.energy_exported_phase_b_active).first_value])
                    FILTER (WHERE (five.energy_exported_phase_b_active).first_time IS NOT NULL))[2],
                max((five.energy_exported_phase_b_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_exported_phase_b_active).last_time), (five.energy_exported_phase_b_active).last_value])
                    FILTER (WHERE (five.energy_exported_phase_b_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_exported_phase_b_active_period_resets), 0),
                min((five.energy_exported_phase_b_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_imported_phase_c_active).first_time) > 0 THEN ROW(
                min((five.energy_imported_phase_c_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_imported_phase_c_active).first_time), (five.energy_imported_phase_c_active).first_value])
                    FILTER (WHERE (five.energy_imported_phase_c_active).first_time IS NOT NULL))[2],
                max((five.energy_imported_phase_c_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_imported_phase_c_active).last_time), (five.energy_imported_phase_c_active).last_value])
                    FILTER (WHERE (five.energy_imported_phase_c_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_imported_phase_c_active_period_resets), 0),
                min((five.energy_imported_phase_c_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_exported_phase_c_active).first_time) > 0 THEN ROW(
                min((five.energy_exported_phase_c_active).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_exported_phase_c_active).first_time), (five.energy_exported_phase_c_active).first_value])
                    FILTER (WHERE (five.energy_exported_phase_c_active).first_time IS NOT NULL))[2],
                max((five.energy_exported_phase_c_active).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_exported_phase_c_active).last_time), (five.energy_exported_phase_c_active).last_value])
                    FILTER (WHERE (five.energy_exported_phase_c_active).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_exported_phase_c_active_period_resets), 0),
                min((five.energy_exported_phase_c_active).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_imported_reactive).first_time) > 0 THEN ROW(
                min((five.energy_imported_reactive).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_imported_reactive).first_time), (five.energy_imported_reactive).first_value])
                    FILTER (WHERE (five.energy_imported_reactive).first_time IS NOT NULL))[2],
                max((five.energy_imported_reactive).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_imported_reactive).last_time), (five.energy_imported_reactive).last_value])
                    FILTER (WHERE (five.energy_imported_reactive).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_imported_reactive_period_resets), 0),
                min((five.energy_imported_reactive).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_exported_reactive).first_time) > 0 THEN ROW(
                min((five.energy_exported_reactive).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_exported_reactive).first_time), (five.energy_exported_reactive).first_value])
                    FILTER (WHERE (five.energy_exported_reactive).first_time IS NOT NULL))[2],
                max((five.energy_exported_reactive).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_exported_reactive).last_time), (five.energy_exported_reactive).last_value])
                    FILTER (WHERE (five.energy_exported_reactive).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_exported_reactive_period_resets), 0),
                min((five.energy_exported_reactive).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_imported_apparent).first_time) > 0 THEN ROW(
                min((five.energy_imported_apparent).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_imported_apparent).first_time), (five.energy_imported_apparent).first_value])
                    FILTER (WHERE (five.energy_imported_apparent).first_time IS NOT NULL))[2],
                max((five.energy_imported_apparent).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_imported_apparent).last_time), (five.energy_imported_apparent).last_value])
                    FILTER (WHERE (five.energy_imported_apparent).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_imported_apparent_period_resets), 0),
                min((five.energy_imported_apparent).minimum)
            )::flux.counter_summary END,
            CASE WHEN count((five.energy_exported_apparent).first_time) > 0 THEN ROW(
                min((five.energy_exported_apparent).first_time),
                (min(ARRAY[extract(epoch FROM (five.energy_exported_apparent).first_time), (five.energy_exported_apparent).first_value])
                    FILTER (WHERE (five.energy_exported_apparent).first_time IS NOT NULL))[2],
                max((five.energy_exported_apparent).last_time),
                (max(ARRAY[extract(epoch FROM (five.energy_exported_apparent).last_time), (five.energy_exported_apparent).last_value])
                    FILTER (WHERE (five.energy_exported_apparent).last_time IS NOT NULL))[2],
                coalesce(sum(five.energy_exported_apparent_period_resets), 0),
                min((five.energy_exported_apparent).minimum)
            )::flux.counter_summary END
        FROM five
        GROUP BY five.device_id, five.period_start
    ),
    emptied AS (
        -- 0002 joined on device_id and time_b only, which the primary key (bucket_minutes, device_id,
        -- time_b) cannot serve: every refresh scanned the whole rollup table. Naming both widths lets
        -- each touched period be two primary-key range scans.
        DELETE FROM flux.meter_reading_rollups AS rollups
        USING touched CROSS JOIN (VALUES (5::smallint), (30::smallint)) AS widths (bucket_minutes)
        WHERE prune_emptied
            AND rollups.bucket_minutes = widths.bucket_minutes
            AND rollups.device_id = touched.device_id
            AND rollups.time_b >= touched.period_start
            AND rollups.time_b < touched.period_start + interval '30 minutes'
            AND NOT EXISTS (
                SELECT FROM computed
                WHERE computed.bucket_minutes = rollups.bucket_minutes
                    AND computed.device_id = rollups.device_id
                    AND computed.time_b = rollups.time_b
            )
    )
    INSERT INTO flux.meter_reading_rollups (bucket_minutes, device_id, time_b, reading_count, frequency_avg, voltage_line_average_avg, current_phase_a_avg, current_phase_b_avg, current_phase_c_avg, current_phase_average_avg, power_phase_a_active_avg, power_phase_b_active_avg, power_phase_c_active_avg, power_total_active_avg, power_total_reactive_avg, power_total_apparent_avg, power_factor_total_avg, energy_imported_active, energy_exported_active, energy_imported_phase_a_active, energy_exported_phase_a_active, energy_imported_phase_b_active, energy_exported_phase_b_active, energy_imported_phase_c_active, energy_exported_phase_c_active, energy_imported_reactive, energy_exported_reactive, energy_imported_apparent, energy_exported_apparent)
    SELECT bucket_minutes, device_id, time_b, reading_count, frequency_avg, voltage_line_average_avg, current_phase_a_avg, current_phase_b_avg, current_phase_c_avg, current_phase_average_avg, power_phase_a_active_avg, power_phase_b_active_avg, power_phase_c_active_avg, power_total_active_avg, power_total_reactive_avg, power_total_apparent_avg, power_factor_total_avg, energy_imported_active, energy_exported_active, energy_imported_phase_a_active, energy_exported_phase_a_active, energy_imported_phase_b_active, energy_exported_phase_b_active, energy_imported_phase_c_active, energy_exported_phase_c_active, energy_imported_reactive, energy_exported_reactive, energy_imported_apparent, energy_exported_apparent
    FROM computed
    ON CONFLICT (bucket_minutes, device_id, time_b) DO UPDATE SET
        reading_count = EXCLUDED.reading_count,
        frequency_avg = EXCLUDED.frequency_avg,
        voltage_line_average_avg = EXCLUDED.voltage_line_average_avg,
        current_phase_a_avg = EXCLUDED.current_phase_a_avg,
        current_phase_b_avg = EXCLUDED.current_phase_b_avg,
        current_phase_c_avg = EXCLUDED.current_phase_c_avg,
        current_phase_average_avg = EXCLUDED.current_phase_average_avg,
        power_phase_a_active_avg = EXCLUDED.power_phase_a_active_avg,
        power_phase_b_active_avg = EXCLUDED.power_phase_b_active_avg,
        power_phase_c_active_avg = EXCLUDED.power_phase_c_active_avg,
        power_total_active_avg = EXCLUDED.power_total_active_avg,
        power_total_reactive_avg = EXCLUDED.power_total_reactive_avg,
        power_total_apparent_avg = EXCLUDED.power_total_apparent_avg,
        power_factor_total_avg = EXCLUDED.power_factor_total_avg,
        energy_imported_active = EXCLUDED.energy_imported_active,
        energy_exported_active = EXCLUDED.energy_exported_active,
        energy_imported_phase_a_active = EXCLUDED.energy_imported_phase_a_active,
        energy_exported_phase_a_active = EXCLUDED.energy_exported_phase_a_active,
        energy_imported_phase_b_active = EXCLUDED.energy_imported_phase_b_active,
        energy_exported_phase_b_active = EXCLUDED.energy_exported_phase_b_active,
        energy_imported_phase_c_active = EXCLUDED.energy_imported_phase_c_active,
        energy_exported_phase_c_active = EXCLUDED.energy_exported_phase_c_active,
        energy_imported_reactive = EXCLUDED.energy_imported_reactive,
        energy_exported_reactive = EXCLUDED.energy_exported_reactive,
        energy_imported_apparent = EXCLUDED.energy_imported_apparent,
        energy_exported_apparent = EXCLUDED.energy_exported_apparent,
        refreshed_at = now();
END
$$;

REVOKE EXECUTE ON FUNCTION flux.refresh_meter_rollups(uuid[], timestamptz[], boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.refresh_meter_rollups(uuid[], timestamptz[], boolean) TO service_role;

ALTER TABLE ingest.meter_rollup_dirty
    ADD COLUMN first_marked_at timestamptz NOT NULL DEFAULT clock_timestamp();


-- The 0007 function without min_age stays for callers that want everything now (it is the same as
-- min_age = 0); both take up to max_pairs pairs, oldest first, skipping those a writer still holds.
CREATE FUNCTION flux.refresh_dirty_meter_rollups(max_pairs integer, min_age interval)
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
            WHERE first_marked_at <= clock_timestamp() - min_age
            ORDER BY first_marked_at
            LIMIT max_pairs
            FOR UPDATE SKIP LOCKED)
        RETURNING device_id, period_start
    )
    SELECT array_agg(device_id), array_agg(period_start) INTO devices, periods FROM taken;
    IF devices IS NULL THEN
        RETURN 0;
    END IF;
    -- A new statement, so a new snapshot: it sees every writer that committed before the markers were taken.
    PERFORM flux.refresh_meter_rollups(devices, periods, prune_emptied => false);
    RETURN cardinality(devices);
END
$$;

REVOKE ALL ON FUNCTION flux.refresh_dirty_meter_rollups(integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.refresh_dirty_meter_rollups(integer, interval) TO service_role;
