-- Recomputes, from the readings themselves, every 5- and 30-minute bucket of the given (device, 30-minute period)
-- pairs, with each bucket's energy deltas, fixes the deltas of the stored buckets next to those periods, and (with
-- prune_emptied) deletes buckets left without readings. Recomputing whole buckets rather than adding the new rows
-- keeps late, duplicate, updated and deleted readings correct. prune_emptied false skips the search for emptied
-- buckets: inserts never empty one. Each touched pair's readings are read through one (device_id, time) index
-- range scan, whatever the size of the readings table (docs/decisions/2026-11-23-rollup-refresh.md).
CREATE OR REPLACE FUNCTION flux.refresh_meter_rollups(
    touched_devices uuid[],
    touched_periods timestamptz[],
    prune_emptied boolean DEFAULT true
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER   -- writers of readings need no rights on the rollup table
SET search_path = pg_catalog, flux
-- The statement's estimated cost grows with the rollup table and passes jit_above_cost: JIT compiling its ~180
-- expressions costs far more than running them.
SET jit = off
AS $$
BEGIN
    -- One lock per device, in a fixed order. A bucket's stored deltas
    -- depend on its neighbours, which can lie in other periods: two refreshes of one meter's adjacent
    -- periods at once would each recompute the other's edge bucket on a snapshot without the other's rows.
    -- The second one waits, and its statements' snapshots include everything the first one wrote.
    PERFORM pg_advisory_xact_lock(hashtextextended('flux.meter_reading_rollups:' || touched.device_id::text, 0))
    FROM (
        SELECT DISTINCT pair.device_id
        FROM unnest(touched_devices) AS pair (device_id)
        ORDER BY 1
    ) AS touched;

    WITH touched AS (
        SELECT DISTINCT pair.device_id, pair.period_start
        FROM unnest(touched_devices, touched_periods) AS pair (device_id, period_start)
    ),
    -- The touched readings, each with the latest earlier non-null value of every counter as
    -- [epoch, value], and the start of its 5-minute bucket.
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
    -- Every computed bucket with its neighbours in the batch: lag/lead over the same meter's computed buckets of
    -- its width, whatever their period. The first and last bucket of a period in the batch also look up the
    -- nearest stored bucket outside the period, as it was before this statement (one index probe each; the
    -- other buckets' probe is an empty range). The nearer of the two is the neighbour after this statement, and
    -- on a tie the batch's is the fresh one. A stored one is stale only if it lies in a period of the batch, and
    -- then (no bucket of such a period is removed on this path) the batch holds a bucket at least as near. With
    -- prune_emptied, buckets can be removed, and the statement after this one checks every touched period again.
    sequenced AS (
        SELECT
            batched.*,
            before.time_b AS before_time_b,
            before.energy_imported_active AS before_energy_imported_active,
            before.energy_exported_active AS before_energy_exported_active,
            before.energy_imported_phase_a_active AS before_energy_imported_phase_a_active,
            before.energy_exported_phase_a_active AS before_energy_exported_phase_a_active,
            before.energy_imported_phase_b_active AS before_energy_imported_phase_b_active,
            before.energy_exported_phase_b_active AS before_energy_exported_phase_b_active,
            before.energy_imported_phase_c_active AS before_energy_imported_phase_c_active,
            before.energy_exported_phase_c_active AS before_energy_exported_phase_c_active,
            before.energy_imported_reactive AS before_energy_imported_reactive,
            before.energy_exported_reactive AS before_energy_exported_reactive,
            before.energy_imported_apparent AS before_energy_imported_apparent,
            before.energy_exported_apparent AS before_energy_exported_apparent,
            after.time_b AS after_time_b,
            after.energy_imported_active AS after_energy_imported_active,
            after.energy_exported_active AS after_energy_exported_active,
            after.energy_imported_phase_a_active AS after_energy_imported_phase_a_active,
            after.energy_exported_phase_a_active AS after_energy_exported_phase_a_active,
            after.energy_imported_phase_b_active AS after_energy_imported_phase_b_active,
            after.energy_exported_phase_b_active AS after_energy_exported_phase_b_active,
            after.energy_imported_phase_c_active AS after_energy_imported_phase_c_active,
            after.energy_exported_phase_c_active AS after_energy_exported_phase_c_active,
            after.energy_imported_reactive AS after_energy_imported_reactive,
            after.energy_exported_reactive AS after_energy_exported_reactive,
            after.energy_imported_apparent AS after_energy_imported_apparent,
            after.energy_exported_apparent AS after_energy_exported_apparent
        FROM (
            SELECT
                computed.*,
                date_bin(interval '30 minutes', computed.time_b, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS period_start,
                lag(computed.time_b) OVER batch AS lag_time_b,
                lead(computed.time_b) OVER batch AS lead_time_b,
                lag(computed.energy_imported_active) OVER batch AS lag_energy_imported_active,
                lead(computed.energy_imported_active) OVER batch AS lead_energy_imported_active,
                lag(computed.energy_exported_active) OVER batch AS lag_energy_exported_active,
                lead(computed.energy_exported_active) OVER batch AS lead_energy_exported_active,
                lag(computed.energy_imported_phase_a_active) OVER batch AS lag_energy_imported_phase_a_active,
                lead(computed.energy_imported_phase_a_active) OVER batch AS lead_energy_imported_phase_a_active,
                lag(computed.energy_exported_phase_a_active) OVER batch AS lag_energy_exported_phase_a_active,
                lead(computed.energy_exported_phase_a_active) OVER batch AS lead_energy_exported_phase_a_active,
                lag(computed.energy_imported_phase_b_active) OVER batch AS lag_energy_imported_phase_b_active,
                lead(computed.energy_imported_phase_b_active) OVER batch AS lead_energy_imported_phase_b_active,
                lag(computed.energy_exported_phase_b_active) OVER batch AS lag_energy_exported_phase_b_active,
                lead(computed.energy_exported_phase_b_active) OVER batch AS lead_energy_exported_phase_b_active,
                lag(computed.energy_imported_phase_c_active) OVER batch AS lag_energy_imported_phase_c_active,
                lead(computed.energy_imported_phase_c_active) OVER batch AS lead_energy_imported_phase_c_active,
                lag(computed.energy_exported_phase_c_active) OVER batch AS lag_energy_exported_phase_c_active,
                lead(computed.energy_exported_phase_c_active) OVER batch AS lead_energy_exported_phase_c_active,
                lag(computed.energy_imported_reactive) OVER batch AS lag_energy_imported_reactive,
                lead(computed.energy_imported_reactive) OVER batch AS lead_energy_imported_reactive,
                lag(computed.energy_exported_reactive) OVER batch AS lag_energy_exported_reactive,
                lead(computed.energy_exported_reactive) OVER batch AS lead_energy_exported_reactive,
                lag(computed.energy_imported_apparent) OVER batch AS lag_energy_imported_apparent,
                lead(computed.energy_imported_apparent) OVER batch AS lead_energy_imported_apparent,
                lag(computed.energy_exported_apparent) OVER batch AS lag_energy_exported_apparent,
                lead(computed.energy_exported_apparent) OVER batch AS lead_energy_exported_apparent
            FROM computed
            WINDOW batch AS (PARTITION BY computed.bucket_minutes, computed.device_id ORDER BY computed.time_b)
        ) AS batched
        LEFT JOIN LATERAL (
            SELECT rollups.time_b, rollups.energy_imported_active, rollups.energy_exported_active, rollups.energy_imported_phase_a_active, rollups.energy_exported_phase_a_active, rollups.energy_imported_phase_b_active, rollups.energy_exported_phase_b_active, rollups.energy_imported_phase_c_active, rollups.energy_exported_phase_c_active, rollups.energy_imported_reactive, rollups.energy_exported_reactive, rollups.energy_imported_apparent, rollups.energy_exported_apparent
            FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = batched.bucket_minutes AND rollups.device_id = batched.device_id
                AND rollups.time_b < CASE WHEN batched.lag_time_b IS NULL OR batched.lag_time_b < batched.period_start
                    THEN batched.period_start ELSE '-infinity' END
            ORDER BY rollups.time_b DESC LIMIT 1
        ) AS before ON true
        LEFT JOIN LATERAL (
            SELECT rollups.time_b, rollups.energy_imported_active, rollups.energy_exported_active, rollups.energy_imported_phase_a_active, rollups.energy_exported_phase_a_active, rollups.energy_imported_phase_b_active, rollups.energy_exported_phase_b_active, rollups.energy_imported_phase_c_active, rollups.energy_exported_phase_c_active, rollups.energy_imported_reactive, rollups.energy_exported_reactive, rollups.energy_imported_apparent, rollups.energy_exported_apparent
            FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = batched.bucket_minutes AND rollups.device_id = batched.device_id
                AND rollups.time_b >= CASE WHEN batched.lead_time_b IS NULL
                    OR batched.lead_time_b >= batched.period_start + interval '30 minutes'
                    THEN batched.period_start + interval '30 minutes' ELSE 'infinity' END
            ORDER BY rollups.time_b ASC LIMIT 1
        ) AS after ON true
    ),
    with_deltas AS (
        SELECT
            sequenced.*,
        flux.counter_delta(
            sequenced.energy_imported_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_imported_active ELSE sequenced.before_energy_imported_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_imported_active ELSE sequenced.after_energy_imported_active END
        ) AS energy_imported_active_delta,
        flux.counter_delta(
            sequenced.energy_exported_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_exported_active ELSE sequenced.before_energy_exported_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_exported_active ELSE sequenced.after_energy_exported_active END
        ) AS energy_exported_active_delta,
        flux.counter_delta(
            sequenced.energy_imported_phase_a_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_imported_phase_a_active ELSE sequenced.before_energy_imported_phase_a_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_imported_phase_a_active ELSE sequenced.after_energy_imported_phase_a_active END
        ) AS energy_imported_phase_a_active_delta,
        flux.counter_delta(
            sequenced.energy_exported_phase_a_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_exported_phase_a_active ELSE sequenced.before_energy_exported_phase_a_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_exported_phase_a_active ELSE sequenced.after_energy_exported_phase_a_active END
        ) AS energy_exported_phase_a_active_delta,
        flux.counter_delta(
            sequenced.energy_imported_phase_b_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_imported_phase_b_active ELSE sequenced.before_energy_imported_phase_b_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_imported_phase_b_active ELSE sequenced.after_energy_imported_phase_b_active END
        ) AS energy_imported_phase_b_active_delta,
        flux.counter_delta(
            sequenced.energy_exported_phase_b_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_exported_phase_b_active ELSE sequenced.before_energy_exported_phase_b_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_exported_phase_b_active ELSE sequenced.after_energy_exported_phase_b_active END
        ) AS energy_exported_phase_b_active_delta,
        flux.counter_delta(
            sequenced.energy_imported_phase_c_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_imported_phase_c_active ELSE sequenced.before_energy_imported_phase_c_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_imported_phase_c_active ELSE sequenced.after_energy_imported_phase_c_active END
        ) AS energy_imported_phase_c_active_delta,
        flux.counter_delta(
            sequenced.energy_exported_phase_c_active, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_exported_phase_c_active ELSE sequenced.before_energy_exported_phase_c_active END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_exported_phase_c_active ELSE sequenced.after_energy_exported_phase_c_active END
        ) AS energy_exported_phase_c_active_delta,
        flux.counter_delta(
            sequenced.energy_imported_reactive, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_imported_reactive ELSE sequenced.before_energy_imported_reactive END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_imported_reactive ELSE sequenced.after_energy_imported_reactive END
        ) AS energy_imported_reactive_delta,
        flux.counter_delta(
            sequenced.energy_exported_reactive, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_exported_reactive ELSE sequenced.before_energy_exported_reactive END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_exported_reactive ELSE sequenced.after_energy_exported_reactive END
        ) AS energy_exported_reactive_delta,
        flux.counter_delta(
            sequenced.energy_imported_apparent, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_imported_apparent ELSE sequenced.before_energy_imported_apparent END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_imported_apparent ELSE sequenced.after_energy_imported_apparent END
        ) AS energy_imported_apparent_delta,
        flux.counter_delta(
            sequenced.energy_exported_apparent, sequenced.time_b, make_interval(mins => sequenced.bucket_minutes),
            CASE WHEN sequenced.lag_time_b >= sequenced.before_time_b OR sequenced.before_time_b IS NULL
                THEN sequenced.lag_energy_exported_apparent ELSE sequenced.before_energy_exported_apparent END,
            CASE WHEN sequenced.lead_time_b <= sequenced.after_time_b OR sequenced.after_time_b IS NULL
                THEN sequenced.lead_energy_exported_apparent ELSE sequenced.after_energy_exported_apparent END
        ) AS energy_exported_apparent_delta
        FROM sequenced
    ),
    emptied AS (
        -- Both widths named, so that each touched period is two range scans of the primary key
        -- (bucket_minutes, device_id, time_b) rather than a scan of the whole rollup table.
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
    INSERT INTO flux.meter_reading_rollups (bucket_minutes, device_id, time_b, reading_count, frequency_avg, voltage_line_average_avg, current_phase_a_avg, current_phase_b_avg, current_phase_c_avg, current_phase_average_avg, power_phase_a_active_avg, power_phase_b_active_avg, power_phase_c_active_avg, power_total_active_avg, power_total_reactive_avg, power_total_apparent_avg, power_factor_total_avg, energy_imported_active, energy_exported_active, energy_imported_phase_a_active, energy_exported_phase_a_active, energy_imported_phase_b_active, energy_exported_phase_b_active, energy_imported_phase_c_active, energy_exported_phase_c_active, energy_imported_reactive, energy_exported_reactive, energy_imported_apparent, energy_exported_apparent, energy_imported_active_delta, energy_exported_active_delta, energy_imported_phase_a_active_delta, energy_exported_phase_a_active_delta, energy_imported_phase_b_active_delta, energy_exported_phase_b_active_delta, energy_imported_phase_c_active_delta, energy_exported_phase_c_active_delta, energy_imported_reactive_delta, energy_exported_reactive_delta, energy_imported_apparent_delta, energy_exported_apparent_delta)
    SELECT bucket_minutes, device_id, time_b, reading_count, frequency_avg, voltage_line_average_avg, current_phase_a_avg, current_phase_b_avg, current_phase_c_avg, current_phase_average_avg, power_phase_a_active_avg, power_phase_b_active_avg, power_phase_c_active_avg, power_total_active_avg, power_total_reactive_avg, power_total_apparent_avg, power_factor_total_avg, energy_imported_active, energy_exported_active, energy_imported_phase_a_active, energy_exported_phase_a_active, energy_imported_phase_b_active, energy_exported_phase_b_active, energy_imported_phase_c_active, energy_exported_phase_c_active, energy_imported_reactive, energy_exported_reactive, energy_imported_apparent, energy_exported_apparent, energy_imported_active_delta, energy_exported_active_delta, energy_imported_phase_a_active_delta, energy_exported_phase_a_active_delta, energy_imported_phase_b_active_delta, energy_exported_phase_b_active_delta, energy_imported_phase_c_active_delta, energy_exported_phase_c_active_delta, energy_imported_reactive_delta, energy_exported_reactive_delta, energy_imported_apparent_delta, energy_exported_apparent_delta
    FROM with_deltas
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
        energy_imported_active_delta = EXCLUDED.energy_imported_active_delta,
        energy_exported_active_delta = EXCLUDED.energy_exported_active_delta,
        energy_imported_phase_a_active_delta = EXCLUDED.energy_imported_phase_a_active_delta,
        energy_exported_phase_a_active_delta = EXCLUDED.energy_exported_phase_a_active_delta,
        energy_imported_phase_b_active_delta = EXCLUDED.energy_imported_phase_b_active_delta,
        energy_exported_phase_b_active_delta = EXCLUDED.energy_exported_phase_b_active_delta,
        energy_imported_phase_c_active_delta = EXCLUDED.energy_imported_phase_c_active_delta,
        energy_exported_phase_c_active_delta = EXCLUDED.energy_exported_phase_c_active_delta,
        energy_imported_reactive_delta = EXCLUDED.energy_imported_reactive_delta,
        energy_exported_reactive_delta = EXCLUDED.energy_exported_reactive_delta,
        energy_imported_apparent_delta = EXCLUDED.energy_imported_apparent_delta,
        energy_exported_apparent_delta = EXCLUDED.energy_exported_apparent_delta,
        refreshed_at = now();

    -- The buckets outside the touched periods whose neighbour was one of the touched periods' buckets: each
    -- touched period's nearest stored bucket of either width on either side, recomputed from the rollups as
    -- they are now (a new statement sees the one above). Those inside another touched period were computed
    -- above, unless buckets may have been removed (prune_emptied): then every touched period's buckets are
    -- checked as well. Only changed deltas are written, so a refresh that moved no edge writes nothing here.
    WITH touched AS (
        SELECT DISTINCT pair.device_id, pair.period_start
        FROM unnest(touched_devices, touched_periods) AS pair (device_id, period_start)
    ),
    candidates AS (
        SELECT DISTINCT widths.bucket_minutes, touched.device_id, candidate.time_b
        FROM touched
        CROSS JOIN (VALUES (5::smallint), (30::smallint)) AS widths (bucket_minutes)
        CROSS JOIN LATERAL (
            (SELECT rollups.time_b FROM flux.meter_reading_rollups AS rollups
             WHERE rollups.bucket_minutes = widths.bucket_minutes AND rollups.device_id = touched.device_id
                 AND rollups.time_b < touched.period_start
             ORDER BY rollups.time_b DESC LIMIT 1)
            UNION ALL
            (SELECT rollups.time_b FROM flux.meter_reading_rollups AS rollups
             WHERE rollups.bucket_minutes = widths.bucket_minutes AND rollups.device_id = touched.device_id
                 AND rollups.time_b >= touched.period_start + interval '30 minutes'
             ORDER BY rollups.time_b LIMIT 1)
            UNION ALL
            SELECT rollups.time_b FROM flux.meter_reading_rollups AS rollups
            WHERE prune_emptied
                AND rollups.bucket_minutes = widths.bucket_minutes AND rollups.device_id = touched.device_id
                AND rollups.time_b >= touched.period_start
                AND rollups.time_b < touched.period_start + interval '30 minutes'
        ) AS candidate
        WHERE prune_emptied OR NOT EXISTS (
            SELECT FROM touched AS other
            WHERE other.device_id = touched.device_id
                AND other.period_start = date_bin(interval '30 minutes', candidate.time_b, TIMESTAMPTZ '2000-01-01 00:00:00+00')
        )
    ),
    recomputed AS (
        SELECT
            bucket.bucket_minutes,
            bucket.device_id,
            bucket.time_b,
            flux.counter_delta(bucket.energy_imported_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_imported_active, following.energy_imported_active) AS energy_imported_active_delta,
            flux.counter_delta(bucket.energy_exported_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_exported_active, following.energy_exported_active) AS energy_exported_active_delta,
            flux.counter_delta(bucket.energy_imported_phase_a_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_imported_phase_a_active, following.energy_imported_phase_a_active) AS energy_imported_phase_a_active_delta,
            flux.counter_delta(bucket.energy_exported_phase_a_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_exported_phase_a_active, following.energy_exported_phase_a_active) AS energy_exported_phase_a_active_delta,
            flux.counter_delta(bucket.energy_imported_phase_b_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_imported_phase_b_active, following.energy_imported_phase_b_active) AS energy_imported_phase_b_active_delta,
            flux.counter_delta(bucket.energy_exported_phase_b_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_exported_phase_b_active, following.energy_exported_phase_b_active) AS energy_exported_phase_b_active_delta,
            flux.counter_delta(bucket.energy_imported_phase_c_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_imported_phase_c_active, following.energy_imported_phase_c_active) AS energy_imported_phase_c_active_delta,
            flux.counter_delta(bucket.energy_exported_phase_c_active, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_exported_phase_c_active, following.energy_exported_phase_c_active) AS energy_exported_phase_c_active_delta,
            flux.counter_delta(bucket.energy_imported_reactive, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_imported_reactive, following.energy_imported_reactive) AS energy_imported_reactive_delta,
            flux.counter_delta(bucket.energy_exported_reactive, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_exported_reactive, following.energy_exported_reactive) AS energy_exported_reactive_delta,
            flux.counter_delta(bucket.energy_imported_apparent, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_imported_apparent, following.energy_imported_apparent) AS energy_imported_apparent_delta,
            flux.counter_delta(bucket.energy_exported_apparent, bucket.time_b, make_interval(mins => bucket.bucket_minutes),
                previous.energy_exported_apparent, following.energy_exported_apparent) AS energy_exported_apparent_delta
        FROM candidates
        JOIN flux.meter_reading_rollups AS bucket
            ON bucket.bucket_minutes = candidates.bucket_minutes AND bucket.device_id = candidates.device_id
                AND bucket.time_b = candidates.time_b
        LEFT JOIN LATERAL (
            SELECT previous.energy_imported_active, previous.energy_exported_active, previous.energy_imported_phase_a_active, previous.energy_exported_phase_a_active, previous.energy_imported_phase_b_active, previous.energy_exported_phase_b_active, previous.energy_imported_phase_c_active, previous.energy_exported_phase_c_active, previous.energy_imported_reactive, previous.energy_exported_reactive, previous.energy_imported_apparent, previous.energy_exported_apparent
            FROM flux.meter_reading_rollups AS previous
            WHERE previous.bucket_minutes = bucket.bucket_minutes AND previous.device_id = bucket.device_id
                AND previous.time_b < bucket.time_b
            ORDER BY previous.time_b DESC LIMIT 1
        ) AS previous ON true
        LEFT JOIN LATERAL (
            SELECT following.energy_imported_active, following.energy_exported_active, following.energy_imported_phase_a_active, following.energy_exported_phase_a_active, following.energy_imported_phase_b_active, following.energy_exported_phase_b_active, following.energy_imported_phase_c_active, following.energy_exported_phase_c_active, following.energy_imported_reactive, following.energy_exported_reactive, following.energy_imported_apparent, following.energy_exported_apparent
            FROM flux.meter_reading_rollups AS following
            WHERE following.bucket_minutes = bucket.bucket_minutes AND following.device_id = bucket.device_id
                AND following.time_b > bucket.time_b
            ORDER BY following.time_b LIMIT 1
        ) AS following ON true
    )
    UPDATE flux.meter_reading_rollups AS rollups SET
        energy_imported_active_delta = recomputed.energy_imported_active_delta,
        energy_exported_active_delta = recomputed.energy_exported_active_delta,
        energy_imported_phase_a_active_delta = recomputed.energy_imported_phase_a_active_delta,
        energy_exported_phase_a_active_delta = recomputed.energy_exported_phase_a_active_delta,
        energy_imported_phase_b_active_delta = recomputed.energy_imported_phase_b_active_delta,
        energy_exported_phase_b_active_delta = recomputed.energy_exported_phase_b_active_delta,
        energy_imported_phase_c_active_delta = recomputed.energy_imported_phase_c_active_delta,
        energy_exported_phase_c_active_delta = recomputed.energy_exported_phase_c_active_delta,
        energy_imported_reactive_delta = recomputed.energy_imported_reactive_delta,
        energy_exported_reactive_delta = recomputed.energy_exported_reactive_delta,
        energy_imported_apparent_delta = recomputed.energy_imported_apparent_delta,
        energy_exported_apparent_delta = recomputed.energy_exported_apparent_delta
    FROM recomputed
    WHERE rollups.bucket_minutes = recomputed.bucket_minutes AND rollups.device_id = recomputed.device_id
        AND rollups.time_b = recomputed.time_b
        AND (rollups.energy_imported_active_delta, rollups.energy_exported_active_delta, rollups.energy_imported_phase_a_active_delta, rollups.energy_exported_phase_a_active_delta, rollups.energy_imported_phase_b_active_delta, rollups.energy_exported_phase_b_active_delta, rollups.energy_imported_phase_c_active_delta, rollups.energy_exported_phase_c_active_delta, rollups.energy_imported_reactive_delta, rollups.energy_exported_reactive_delta, rollups.energy_imported_apparent_delta, rollups.energy_exported_apparent_delta)
            IS DISTINCT FROM (recomputed.energy_imported_active_delta, recomputed.energy_exported_active_delta, recomputed.energy_imported_phase_a_active_delta, recomputed.energy_exported_phase_a_active_delta, recomputed.energy_imported_phase_b_active_delta, recomputed.energy_exported_phase_b_active_delta, recomputed.energy_imported_phase_c_active_delta, recomputed.energy_exported_phase_c_active_delta, recomputed.energy_imported_reactive_delta, recomputed.energy_exported_reactive_delta, recomputed.energy_imported_apparent_delta, recomputed.energy_exported_apparent_delta);
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.refresh_meter_rollups(uuid[], timestamptz[], boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.refresh_meter_rollups(uuid[], timestamptz[], boolean) TO service_role;
