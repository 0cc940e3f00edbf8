-- 30-minute settlement-period meter aggregates, an RPC of the Flux API: buckets with start_time <= time_b <= end_time, all devices when
-- device_ids is null, last 24 hours by default.
CREATE OR REPLACE FUNCTION flux.get_meter_readings_30m(
    start_time timestamptz DEFAULT now() - interval '24 hours',
    end_time timestamptz DEFAULT now(),
    device_ids uuid[] DEFAULT NULL
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
    SELECT * FROM flux.meter_reading_buckets(30, start_time, end_time, device_ids)
$$;
