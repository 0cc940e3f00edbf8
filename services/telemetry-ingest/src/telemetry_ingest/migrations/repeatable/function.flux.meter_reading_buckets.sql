-- The RPC rows of one bucket width, with the deltas the refresh stored: a bucket's delta interpolates towards
-- its meter's neighbouring stored buckets even when those lie outside [start_time, end_time], so it is the same
-- whichever window includes it. Rows stream in (time_b, device_id) order, period by period, so that a LIMIT
-- above the RPC (the API's row cap, limit, offset, Range) stops the work early.
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
        bucket.time_b,
        bucket.device_id,
        bucket.frequency_avg,
        bucket.voltage_line_average_avg,
        bucket.current_phase_a_avg,
        bucket.current_phase_b_avg,
        bucket.current_phase_c_avg,
        bucket.current_phase_average_avg,
        bucket.power_phase_a_active_avg,
        bucket.power_phase_b_active_avg,
        bucket.power_phase_c_active_avg,
        bucket.power_total_active_avg,
        bucket.power_total_reactive_avg,
        bucket.power_total_apparent_avg,
        bucket.power_factor_total_avg,
        (bucket.energy_imported_active).minimum::real,
        (bucket.energy_exported_active).minimum::real,
        (bucket.energy_imported_phase_a_active).minimum::real,
        (bucket.energy_exported_phase_a_active).minimum::real,
        (bucket.energy_imported_phase_b_active).minimum::real,
        (bucket.energy_exported_phase_b_active).minimum::real,
        (bucket.energy_imported_phase_c_active).minimum::real,
        (bucket.energy_exported_phase_c_active).minimum::real,
        bucket.energy_imported_active_delta,
        bucket.energy_exported_active_delta,
        bucket.energy_imported_phase_a_active_delta,
        bucket.energy_exported_phase_a_active_delta,
        bucket.energy_imported_phase_b_active_delta,
        bucket.energy_exported_phase_b_active_delta,
        bucket.energy_imported_phase_c_active_delta,
        bucket.energy_exported_phase_c_active_delta,
        bucket.energy_imported_reactive_delta,
        bucket.energy_exported_reactive_delta,
        bucket.energy_imported_apparent_delta,
        bucket.energy_exported_apparent_delta
    FROM (
        SELECT period.time_b
        FROM generate_series((SELECT min(active.first_b) FROM active), (SELECT max(active.last_b) FROM active),
                             make_interval(mins => width_minutes)) AS period (time_b)
        ORDER BY period.time_b
    ) AS periods
    CROSS JOIN LATERAL (
        SELECT bucket.*
        FROM flux.meter_reading_rollups AS bucket
        WHERE bucket.bucket_minutes = width_minutes
            AND bucket.device_id = ANY (ARRAY(SELECT active.device_id FROM active))
            AND bucket.time_b = periods.time_b
        ORDER BY bucket.device_id
    ) AS bucket
    ORDER BY periods.time_b, bucket.device_id
$$;
