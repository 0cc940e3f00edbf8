-- The RPC rows: select the requested meters' buckets through the primary key (bucket, device, time)
-- instead of filtering every meter's buckets. Same results as 0002 (the rest of the function is
-- unchanged); measured 10-20 % faster for 50 of 1,000 meters over 30 days (151-166 ms vs 168-203 ms).

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
    WITH chosen AS (
        -- Two branches rather than (device_ids IS NULL OR device_id = ANY (device_ids)): the OR cannot be an
        -- index condition, so asking for 50 of 1,000 meters scanned all 1,000 meters' buckets.
        SELECT rollups.*
        FROM flux.meter_reading_rollups AS rollups
        WHERE device_ids IS NOT NULL
            AND rollups.bucket_minutes = width_minutes
            AND rollups.device_id = ANY (device_ids)
            AND rollups.time_b BETWEEN start_time AND end_time
        UNION ALL
        SELECT rollups.*
        FROM flux.meter_reading_rollups AS rollups
        WHERE device_ids IS NULL
            AND rollups.bucket_minutes = width_minutes
            AND rollups.time_b BETWEEN start_time AND end_time
    ),
    neighbours AS (
        SELECT before.*
        FROM (SELECT DISTINCT chosen.device_id FROM chosen) AS devices
        CROSS JOIN LATERAL (
            SELECT rollups.* FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = width_minutes AND rollups.device_id = devices.device_id
                AND rollups.time_b < start_time
            ORDER BY rollups.time_b DESC LIMIT 1
        ) AS before
        UNION ALL
        SELECT after.*
        FROM (SELECT DISTINCT chosen.device_id FROM chosen) AS devices
        CROSS JOIN LATERAL (
            SELECT rollups.* FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = width_minutes AND rollups.device_id = devices.device_id
                AND rollups.time_b > end_time
            ORDER BY rollups.time_b LIMIT 1
        ) AS after
    ),
    windowed AS (
        SELECT
            rollups.*,
            lag(rollups.energy_imported_active) OVER ordered AS previous_energy_imported_active,
            lead(rollups.energy_imported_active) OVER ordered AS following_energy_imported_active,
            lag(rollups.energy_exported_active) OVER ordered AS previous_energy_exported_active,
            lead(rollups.energy_exported_active) OVER ordered AS following_energy_exported_active,
            lag(rollups.energy_imported_phase_a_active) OVER ordered AS previous_energy_imported_phase_a_active,
            lead(rollups.energy_imported_phase_a_active) OVER ordered AS following_energy_imported_phase_a_active,
            lag(rollups.energy_exported_phase_a_active) OVER ordered AS previous_energy_exported_phase_a_active,
            lead(rollups.energy_exported_phase_a_active) OVER ordered AS following_energy_exported_phase_a_active,
            lag(rollups.energy_imported_phase_b_active) OVER ordered AS previous_energy_imported_phase_b_active,
            lead(rollups.energy_imported_phase_b_active) OVER ordered AS following_energy_imported_phase_b_active,
            lag(rollups.energy_exported_phase_b_active) OVER ordered AS previous_energy_exported_phase_b_active,
            lead(rollups.energy_exported_phase_b_active) OVER ordered AS following_energy_exported_phase_b_active,
            lag(rollups.energy_imported_phase_c_active) OVER ordered AS previous_energy_imported_phase_c_active,
            lead(rollups.energy_imported_phase_c_active) OVER ordered AS following_energy_imported_phase_c_active,
            lag(rollups.energy_exported_phase_c_active) OVER ordered AS previous_energy_exported_phase_c_active,
            lead(rollups.energy_exported_phase_c_active) OVER ordered AS following_energy_exported_phase_c_active,
            lag(rollups.energy_imported_reactive) OVER ordered AS previous_energy_imported_reactive,
            lead(rollups.energy_imported_reactive) OVER ordered AS following_energy_imported_reactive,
            lag(rollups.energy_exported_reactive) OVER ordered AS previous_energy_exported_reactive,
            lead(rollups.energy_exported_reactive) OVER ordered AS following_energy_exported_reactive,
            lag(rollups.energy_imported_apparent) OVER ordered AS previous_energy_imported_apparent,
            lead(rollups.energy_imported_apparent) OVER ordered AS following_energy_imported_apparent,
            lag(rollups.energy_exported_apparent) OVER ordered AS previous_energy_exported_apparent,
            lead(rollups.energy_exported_apparent) OVER ordered AS following_energy_exported_apparent
        FROM (SELECT * FROM chosen UNION ALL SELECT * FROM neighbours) AS rollups
        WINDOW ordered AS (PARTITION BY rollups.device_id ORDER BY rollups.time_b)
    )
    SELECT
        windowed.time_b,
        windowed.device_id,
        windowed.frequency_avg,
        windowed.voltage_line_average_avg,
        windowed.current_phase_a_avg,
        windowed.current_phase_b_avg,
        windowed.current_phase_c_avg,
        windowed.current_phase_average_avg,
        windowed.power_phase_a_active_avg,
        windowed.power_phase_b_active_avg,
        windowed.power_phase_c_active_avg,
        windowed.power_total_active_avg,
        windowed.power_total_reactive_avg,
        windowed.power_total_apparent_avg,
        windowed.power_factor_total_avg,
        (windowed.energy_imported_active).minimum::real,
        (windowed.energy_exported_active).minimum::real,
        (windowed.energy_imported_phase_a_active).minimum::real,
        (windowed.energy_exported_phase_a_active).minimum::real,
        (windowed.energy_imported_phase_b_active).minimum::real,
        (windowed.energy_exported_phase_b_active).minimum::real,
        (windowed.energy_imported_phase_c_active).minimum::real,
        (windowed.energy_exported_phase_c_active).minimum::real,
        flux.interpolated_delta(windowed.energy_imported_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_active, windowed.following_energy_imported_active),
        flux.interpolated_delta(windowed.energy_exported_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_active, windowed.following_energy_exported_active),
        flux.interpolated_delta(windowed.energy_imported_phase_a_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_phase_a_active, windowed.following_energy_imported_phase_a_active),
        flux.interpolated_delta(windowed.energy_exported_phase_a_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_phase_a_active, windowed.following_energy_exported_phase_a_active),
        flux.interpolated_delta(windowed.energy_imported_phase_b_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_phase_b_active, windowed.following_energy_imported_phase_b_active),
        flux.interpolated_delta(windowed.energy_exported_phase_b_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_phase_b_active, windowed.following_energy_exported_phase_b_active),
        flux.interpolated_delta(windowed.energy_imported_phase_c_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_phase_c_active, windowed.following_energy_imported_phase_c_active),
        flux.interpolated_delta(windowed.energy_exported_phase_c_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_phase_c_active, windowed.following_energy_exported_phase_c_active),
        flux.interpolated_delta(windowed.energy_imported_reactive, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_reactive, windowed.following_energy_imported_reactive),
        flux.interpolated_delta(windowed.energy_exported_reactive, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_reactive, windowed.following_energy_exported_reactive),
        flux.interpolated_delta(windowed.energy_imported_apparent, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_apparent, windowed.following_energy_imported_apparent),
        flux.interpolated_delta(windowed.energy_exported_apparent, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_apparent, windowed.following_energy_exported_apparent)
    FROM windowed
    WHERE windowed.time_b BETWEEN start_time AND end_time
    ORDER BY windowed.time_b, windowed.device_id
$$;
