-- The RPC rows, computed bucket period by bucket period in (time_b, device_id) order, so that a LIMIT above the
-- RPC (the API's rows cap, limit/offset, a Range header) stops the work after the rows it returns.
--
-- 0002/0008 gathered every requested bucket with its whole row, sorted them by device for lag()/lead() (the
-- neighbours' counter summaries), and sorted the result again by (time_b, device_id): for 30 days of 50 of
-- 1,000 meters, 72,000 rows of about 1 kB each, an external sort of 68 MB and some 60,000 heap pages (the
-- 30-minute rows of one period lie 8 to a page), although the API returns the first 1,000 rows only
-- (bench/telemetry.py part 3, 8.5 M readings: API p50 1.3 s, p99 2.1 s; the statement alone 2.2-8 s cold).
-- Now the same request computes about 1,050 buckets (p50 ~80 ms at the API, of which ~30 ms are the 12
-- PL/pgSQL interpolated_delta calls per row and ~10 ms json_agg).
--
-- Same rows, values and order: a bucket's neighbours are still the meter's previous and following stored
-- buckets of the same width (inside or outside [start_time, end_time]); they are looked up per bucket by
-- primary key instead of by lag()/lead() over the requested rows plus one stored bucket on either side, which
-- gives the same rows. What changed is the order of work:
--   * active: per requested meter (all meters with buckets of this width when device_ids is null, found by a
--     skip scan of the primary key), its first and last bucket inside the window: two index probes each;
--   * the bucket periods from the earliest to the latest of those, sorted (a small sort of timestamps);
--   * per period, the requested meters' buckets by primary key, sorted by device_id, with their previous and
--     following buckets (one index probe each).
-- The outer ORDER BY is then an incremental sort of one period's rows at a time, and everything stays a
-- single SQL statement in a STABLE LANGUAGE sql function, which the planner inlines into the caller's query
-- (as it inlines get_meter_readings_5m/_30m, which call this function by name and are unchanged): the LIMIT of
-- `SELECT ... FROM flux.get_meter_readings_30m(...) LIMIT 1000` reaches the per-period nested loop, and
-- count(*) over the RPC reads no neighbours. The work is now proportional to the periods spanned times the
-- meters asked for, rather than to the stored buckets: a window with long gaps inside its data costs index
-- probes for the empty periods (leading and trailing gaps cost nothing).

CREATE OR REPLACE FUNCTION flux.meter_reading_buckets(
    width_minutes integer, start_time timestamptz, end_time timestamptz, device_ids uuid[]
)
RETURNS TABLE (
    time_b timestamptz,
    device_id uuid,
    frequency_avg double precision,
    voltage_line_average_avg double precision,
    current_phase_a_avg double precision,
    current_phase_b_avg double precision,
    current_phase_c_avg double precision,
    current_phase_average_avg double precision,
    power_phase_a_active_avg double precision,
    power_phase_b_active_avg double precision,
    power_phase_c_active_avg double precision,
    power_total_active_avg double precision,
    power_total_reactive_avg double precision,
    power_total_apparent_avg double precision,
    power_factor_total_avg double precision,
    energy_imported_active_min real,
    energy_exported_active_min real,
    energy_imported_phase_a_active_min real,
    energy_exported_phase_a_active_min real,
    energy_imported_phase_b_active_min real,
    energy_exported_phase_b_active_min real,
    energy_imported_phase_c_active_min real,
    energy_exported_phase_c_active_min real,
    energy_imported_active_delta double precision,
    energy_exported_active_delta double precision,
    energy_imported_phase_a_active_delta double precision,
    energy_exported_phase_a_active_delta double precision,
    energy_imported_phase_b_active_delta double precision,
    energy_exported_phase_b_active_delta double precision,
    energy_imported_phase_c_active_delta double precision,
    energy_exported_phase_c_active_delta double precision,
    energy_imported_reactive_delta double precision,
    energy_exported_reactive_delta double precision,
    energy_imported_apparent_delta double precision,
    energy_exported_apparent_delta double precision
)
LANGUAGE sql
STABLE
AS $$
    WITH active AS (
        SELECT devices.device_id, first.time_b AS first_b, last.time_b AS last_b
        FROM unnest(coalesce(device_ids, ARRAY(
            WITH RECURSIVE known (device_id) AS (
                (SELECT rollups.device_id FROM flux.meter_reading_rollups AS rollups
                 WHERE rollups.bucket_minutes = width_minutes ORDER BY rollups.device_id LIMIT 1)
                UNION ALL
                SELECT (SELECT rollups.device_id FROM flux.meter_reading_rollups AS rollups
                        WHERE rollups.bucket_minutes = width_minutes AND rollups.device_id > known.device_id
                        ORDER BY rollups.device_id LIMIT 1)
                FROM known WHERE known.device_id IS NOT NULL
            )
            SELECT known.device_id FROM known WHERE known.device_id IS NOT NULL
        ))) AS devices (device_id)
        CROSS JOIN LATERAL (
            SELECT rollups.time_b FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = width_minutes AND rollups.device_id = devices.device_id
                AND rollups.time_b BETWEEN start_time AND end_time
            ORDER BY rollups.time_b LIMIT 1
        ) AS first
        CROSS JOIN LATERAL (
            SELECT rollups.time_b FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = width_minutes AND rollups.device_id = devices.device_id
                AND rollups.time_b BETWEEN start_time AND end_time
            ORDER BY rollups.time_b DESC LIMIT 1
        ) AS last
    )
    SELECT
        (rows.bucket).time_b,
        (rows.bucket).device_id,
        (rows.bucket).frequency_avg,
        (rows.bucket).voltage_line_average_avg,
        (rows.bucket).current_phase_a_avg,
        (rows.bucket).current_phase_b_avg,
        (rows.bucket).current_phase_c_avg,
        (rows.bucket).current_phase_average_avg,
        (rows.bucket).power_phase_a_active_avg,
        (rows.bucket).power_phase_b_active_avg,
        (rows.bucket).power_phase_c_active_avg,
        (rows.bucket).power_total_active_avg,
        (rows.bucket).power_total_reactive_avg,
        (rows.bucket).power_total_apparent_avg,
        (rows.bucket).power_factor_total_avg,
        ((rows.bucket).energy_imported_active).minimum::real,
        ((rows.bucket).energy_exported_active).minimum::real,
        ((rows.bucket).energy_imported_phase_a_active).minimum::real,
        ((rows.bucket).energy_exported_phase_a_active).minimum::real,
        ((rows.bucket).energy_imported_phase_b_active).minimum::real,
        ((rows.bucket).energy_exported_phase_b_active).minimum::real,
        ((rows.bucket).energy_imported_phase_c_active).minimum::real,
        ((rows.bucket).energy_exported_phase_c_active).minimum::real,
        flux.interpolated_delta((rows.bucket).energy_imported_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_imported_active, (rows.following).energy_imported_active),
        flux.interpolated_delta((rows.bucket).energy_exported_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_exported_active, (rows.following).energy_exported_active),
        flux.interpolated_delta((rows.bucket).energy_imported_phase_a_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_imported_phase_a_active, (rows.following).energy_imported_phase_a_active),
        flux.interpolated_delta((rows.bucket).energy_exported_phase_a_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_exported_phase_a_active, (rows.following).energy_exported_phase_a_active),
        flux.interpolated_delta((rows.bucket).energy_imported_phase_b_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_imported_phase_b_active, (rows.following).energy_imported_phase_b_active),
        flux.interpolated_delta((rows.bucket).energy_exported_phase_b_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_exported_phase_b_active, (rows.following).energy_exported_phase_b_active),
        flux.interpolated_delta((rows.bucket).energy_imported_phase_c_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_imported_phase_c_active, (rows.following).energy_imported_phase_c_active),
        flux.interpolated_delta((rows.bucket).energy_exported_phase_c_active, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_exported_phase_c_active, (rows.following).energy_exported_phase_c_active),
        flux.interpolated_delta((rows.bucket).energy_imported_reactive, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_imported_reactive, (rows.following).energy_imported_reactive),
        flux.interpolated_delta((rows.bucket).energy_exported_reactive, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_exported_reactive, (rows.following).energy_exported_reactive),
        flux.interpolated_delta((rows.bucket).energy_imported_apparent, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_imported_apparent, (rows.following).energy_imported_apparent),
        flux.interpolated_delta((rows.bucket).energy_exported_apparent, (rows.bucket).time_b, make_interval(mins => width_minutes), (rows.previous).energy_exported_apparent, (rows.following).energy_exported_apparent)
    FROM (
        SELECT period.time_b
        FROM generate_series((SELECT min(active.first_b) FROM active), (SELECT max(active.last_b) FROM active),
                             make_interval(mins => width_minutes)) AS period (time_b)
        ORDER BY period.time_b
    ) AS periods
    CROSS JOIN LATERAL (
        SELECT
            bucket.device_id,
            bucket,
            (SELECT previous FROM flux.meter_reading_rollups AS previous
             WHERE previous.bucket_minutes = width_minutes AND previous.device_id = bucket.device_id
                 AND previous.time_b < bucket.time_b
             ORDER BY previous.time_b DESC LIMIT 1) AS previous,
            (SELECT following FROM flux.meter_reading_rollups AS following
             WHERE following.bucket_minutes = width_minutes AND following.device_id = bucket.device_id
                 AND following.time_b > bucket.time_b
             ORDER BY following.time_b LIMIT 1) AS following
        FROM flux.meter_reading_rollups AS bucket
        WHERE bucket.bucket_minutes = width_minutes
            AND bucket.device_id = ANY (ARRAY(SELECT active.device_id FROM active))
            AND bucket.time_b = periods.time_b
        ORDER BY bucket.device_id
    ) AS rows
    ORDER BY periods.time_b, rows.device_id
$$;
