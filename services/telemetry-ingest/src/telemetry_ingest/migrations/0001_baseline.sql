-- telemetry-ingest's tables, as a fresh database gets them. Functions, views and triggers are not here: each
-- has its file under repeatable/, applied after this one and re-applied whenever it changes.
--
-- Schema flux is what the Flux API (REST, realtime) exposes: the device registry, BESS and meter readings,
-- market data, the meter rollups. Schema ingest is the service's own bookkeeping, never exposed: its default
-- privileges grant nothing, so no API key can read it.
--
-- Readings tables are range-partitioned by month on time, with a default partition so that a reading from any
-- date is accepted; flux.ensure_reading_partitions (repeatable/function.flux.ensure_reading_partitions.sql)
-- creates the monthly partitions ahead of time and moves rows already parked in the default partition.
CREATE SCHEMA IF NOT EXISTS flux;

-- Roles are cluster-wide, so another database's migration may already have created them, possibly at
-- this very moment: check first, and treat a concurrent creation as success.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

CREATE TABLE IF NOT EXISTS flux.mg_device_registry (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    name text NOT NULL UNIQUE,           -- what upstream commands call device_id
    -- One list of device types, the same as gridloop_common.contracts.DeviceType: a registration through the
    -- REST API with another type answers 400 (23514) naming this constraint.
    type text NOT NULL CONSTRAINT mg_device_registry_type_check
        CHECK (type IN ('bess', 'meter', 'space_heating', 'water_heater', 'on_off_ev_charger',
                        'electric_vehicle_v1g', 'electric_vehicle_v2g')),
    site text NOT NULL,
    -- Limits and address, e.g. {"capacity_kwh": 13.5, "max_power_kw": 5,
    --   "modbus": {"host": "10.0.0.5", "port": 502, "unit_id": 1, "profile": "sunspec"}}
    metadata jsonb,
    active boolean NOT NULL DEFAULT true
);
CREATE INDEX IF NOT EXISTS mg_device_registry_site ON flux.mg_device_registry (site);
CREATE INDEX IF NOT EXISTS mg_device_registry_type ON flux.mg_device_registry (type);

-- No foreign key to the registry: a reading must never be lost because its device was registered late.
CREATE TABLE IF NOT EXISTS flux.mg_bess_readings (
    time timestamptz NOT NULL,
    device_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    soe real NOT NULL CHECK (soe >= 0 AND soe <= 100),   -- percent (docs/design.md)
    target_power real NOT NULL,                          -- kW, positive charges
    available_inverter_blocks smallint,
    command_source smallint,                             -- 0 manual, 1 NIV chase, ... 5 Axle dispatch
    real_power_mode smallint,                            -- Tesla real power mode
    CONSTRAINT mg_bess_readings_device_time UNIQUE (device_id, time)
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS flux.mg_bess_readings_default PARTITION OF flux.mg_bess_readings DEFAULT;
-- The unique key serves per-device time ranges (scanned backwards for time.desc); this one serves
-- fleet-wide "latest first" queries.
CREATE INDEX IF NOT EXISTS mg_bess_readings_time ON flux.mg_bess_readings (time DESC);

CREATE TABLE IF NOT EXISTS flux.mg_meter_readings (
    time timestamptz NOT NULL,
    device_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Hz, V, A, kW (positive imports), kVAR, kVA, and cumulative kWh / kVARh / kVAh counters.
    frequency real,
    voltage_line_average real,
    current_phase_a real,
    current_phase_b real,
    current_phase_c real,
    current_phase_average real,
    power_phase_a_active real,
    power_phase_b_active real,
    power_phase_c_active real,
    power_total_active real,
    power_total_reactive real,
    power_total_apparent real,
    power_factor_total real,
    energy_imported_active real,
    energy_exported_active real,
    energy_imported_phase_a_active real,
    energy_exported_phase_a_active real,
    energy_imported_phase_b_active real,
    energy_exported_phase_b_active real,
    energy_imported_phase_c_active real,
    energy_exported_phase_c_active real,
    energy_imported_reactive real,
    energy_exported_reactive real,
    energy_imported_apparent real,
    energy_exported_apparent real,
    CONSTRAINT mg_meter_readings_device_time UNIQUE (device_id, time)
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS flux.mg_meter_readings_default PARTITION OF flux.mg_meter_readings DEFAULT;
CREATE INDEX IF NOT EXISTS mg_meter_readings_time ON flux.mg_meter_readings (time DESC);

CREATE TABLE IF NOT EXISTS flux.market_data_types (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text,
    unit text
);
INSERT INTO flux.market_data_types (id, name, description, unit) VALUES
    (1, 'niv_estimate', 'NIV Estimate', 'MW'),
    (2, 'wholesale_price', 'Wholesale Price', '£/MWh'),
    (3, 'imbalance_price', 'Imbalance Price', '£/MWh'),
    (4, 'axle_dispatch', 'Axle Dispatch', 'kW')
ON CONFLICT (id) DO NOTHING;
-- The rows above took explicit ids; move the sequence past them so a new type gets a fresh id.
SELECT setval(pg_get_serial_sequence('flux.market_data_types', 'id'),
              (SELECT max(id) FROM flux.market_data_types));

-- Append-only revisions: a (type, time) may have several rows, the latest created_at is current.
CREATE TABLE IF NOT EXISTS flux.market_data (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    time timestamptz NOT NULL,
    type integer NOT NULL REFERENCES flux.market_data_types (id),
    value real NOT NULL,
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS market_data_type_time ON flux.market_data (type, time DESC, created_at DESC);

-- 5-minute and 30-minute meter rollups, kept current by triggers, served by the meter RPCs.
--
-- The upstream Flux API used TimescaleDB continuous aggregates with timescaledb_toolkit's counter_agg and
-- interpolated_delta. Plain PostgreSQL has neither, so each bucket keeps a flux.counter_summary per
-- counter (first and last reading, resets, minimum) and flux.interpolated_delta extends a bucket's
-- increase to its exact boundaries from the neighbouring buckets, as the toolkit does.

-- What a bucket knows about one cumulative counter. A drop in the counter is a reset (meter replaced or
-- wrapped): the value seen before the drop is added to reset_total so the increase stays continuous.
CREATE TYPE flux.counter_summary AS (
    first_time timestamptz,
    first_value double precision,
    last_time timestamptz,
    last_value double precision,
    reset_total double precision,
    minimum double precision
);

-- One row per (bucket width, device, bucket). Buckets are aligned as TimescaleDB's time_bucket aligns
-- them (on 2000-01-01 UTC), so every 5-minute bucket lies inside one 30-minute bucket.
CREATE TABLE flux.meter_reading_rollups (
    bucket_minutes smallint NOT NULL CHECK (bucket_minutes IN (5, 30)),
    device_id uuid NOT NULL,
    time_b timestamptz NOT NULL,
    reading_count integer NOT NULL,
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
    energy_imported_active flux.counter_summary,
    energy_exported_active flux.counter_summary,
    energy_imported_phase_a_active flux.counter_summary,
    energy_exported_phase_a_active flux.counter_summary,
    energy_imported_phase_b_active flux.counter_summary,
    energy_exported_phase_b_active flux.counter_summary,
    energy_imported_phase_c_active flux.counter_summary,
    energy_exported_phase_c_active flux.counter_summary,
    energy_imported_reactive flux.counter_summary,
    energy_exported_reactive flux.counter_summary,
    energy_imported_apparent flux.counter_summary,
    energy_exported_apparent flux.counter_summary,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    -- Each counter's increase over the bucket (flux.counter_delta over the bucket and its neighbours), stored by
    -- the refresh so the RPCs read it instead of computing it per row.
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
    energy_exported_apparent_delta double precision,
    PRIMARY KEY (bucket_minutes, device_id, time_b)
);

-- Recomputes, from the readings themselves, every 5- and 30-minute bucket of the given (device,

-- Who may do what in schema flux, as Supabase's keys map to roles: anon reads, authenticated reads and
-- writes readings, service_role does everything. Row-level security is on for every exposed table
-- (an exposed table without it is readable by any role that is granted SELECT on it), with policies
-- that state these rules; the tables' owner (the service's own connection) is not subject to them.

-- The service's login role switches to the request's role with SET LOCAL ROLE, which needs membership.
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT anon, authenticated, service_role TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA flux TO anon, authenticated, service_role;

GRANT SELECT ON ALL TABLES IN SCHEMA flux TO anon, authenticated;
-- A device's metadata holds its controller's Modbus host, port and unit id, and Modbus has no authentication:
-- read with the anon key (public by design) it is a map of writable controllers. anon keeps SELECT on every
-- other column of the registry (column privileges, Supabase's column-level security); as in PostgREST, a
-- restricted role must then name its columns: `select=*` on the registry is a permission error for anon.
REVOKE SELECT ON flux.mg_device_registry FROM anon;
GRANT SELECT (id, created_at, name, type, site, active) ON flux.mg_device_registry TO anon;
GRANT INSERT ON flux.mg_bess_readings, flux.mg_meter_readings TO authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA flux TO service_role;
GRANT ALL ON ALL SEQUENCES IN SCHEMA flux TO service_role;
-- Partitions created later by flux.ensure_reading_partitions get the same rights.
ALTER DEFAULT PRIVILEGES IN SCHEMA flux GRANT SELECT ON TABLES TO anon, authenticated;
ALTER DEFAULT PRIVILEGES IN SCHEMA flux GRANT ALL ON TABLES TO service_role;

ALTER TABLE flux.mg_device_registry ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.mg_bess_readings ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.mg_meter_readings ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.market_data ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.market_data_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.meter_reading_rollups ENABLE ROW LEVEL SECURITY;

CREATE POLICY read_all ON flux.mg_device_registry FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.mg_bess_readings FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.mg_meter_readings FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.market_data FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.market_data_types FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.meter_reading_rollups FOR SELECT TO anon, authenticated USING (true);

CREATE POLICY insert_readings ON flux.mg_bess_readings FOR INSERT TO authenticated WITH CHECK (true);
CREATE POLICY insert_readings ON flux.mg_meter_readings FOR INSERT TO authenticated WITH CHECK (true);

CREATE POLICY service_all ON flux.mg_device_registry FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.mg_bess_readings FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.mg_meter_readings FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.market_data FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.market_data_types FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.meter_reading_rollups FOR ALL TO service_role USING (true) WITH CHECK (true);

-- Progress of the upstream telemetry upload (POST /v1/telemetry/BATTERY): what the upstream accepted.
--
-- Kept in a schema of its own rather than in flux: flux is what the Flux API exposes, and its default
-- privileges would make these rows readable with the anon key. No role but the owner is granted anything.
CREATE SCHEMA IF NOT EXISTS ingest;

-- One row per battery. uploaded_until is the high-water mark: every reading of the device at or before
-- it was accepted upstream or parked in telemetry_upload_retries. reported_until is the end of the last
-- accepted point, online or offline, which tells when the device is next due for an offline report.
CREATE TABLE IF NOT EXISTS ingest.telemetry_upload_marks (
    device_id uuid PRIMARY KEY,          -- flux.mg_device_registry.id; no foreign key, like the readings
    uploaded_until timestamptz,
    reported_until timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Readings the upstream answered FAILED for, item by item; resent (the upstream asks for that) until
-- accepted or until the uploader gives up after a few attempts, so one bad reading never blocks a device.
CREATE TABLE IF NOT EXISTS ingest.telemetry_upload_retries (
    device_id uuid NOT NULL,
    reading_time timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, reading_time)
);

-- Bulk ingest marks the (device, 30-minute period) pairs it touched and a refresher recomputes them about once
-- a second, instead of recomputing inside every 200-reading transaction. Everything else (REST inserts,
-- updates, deletes, manual SQL) refreshes in the same statement, because it does not set
-- gridloop.rollups = 'deferred'. first_marked_at lets the refresher leave a period alone until it settles:
-- a device reporting every 5 s touches its period 360 times, and each refresh recomputes the whole period.
CREATE TABLE ingest.meter_rollup_dirty (
    device_id uuid NOT NULL,
    period_start timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    first_marked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device_id, period_start)
);

-- Tables some realtime subscriber watches: building the JSON of every inserted row for pg_notify costs about as
-- much as storing the row, and almost always nobody listens. Each API replica records which tables its
-- subscribers watch, with an expiry it keeps pushing forward while they stay; the readings' notify trigger looks
-- that up once per statement. A replica that dies leaves rows that expire by themselves: until then they only
-- cost the notifications, never a lost change.
CREATE TABLE ingest.realtime_interest (
    replica uuid NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (schema_name, table_name, replica)
);

COMMENT ON TABLE ingest.realtime_interest IS
    'Tables that realtime subscribers of an API replica watch; rows past expires_at are ignored.';

-- Closed days of readings rewritten in (device_id, time) order by ingest.reorder_readings_day, so that one
-- device's day is a few neighbouring heap pages instead of one page per reading (TimescaleDB's reorder policy,
-- one UTC day of one readings table at a time).
CREATE TABLE ingest.reordered_days (
    table_name text NOT NULL CHECK (table_name IN ('mg_meter_readings', 'mg_bess_readings')),
    day date NOT NULL,
    row_count bigint NOT NULL,
    reordered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, day)
);

COMMENT ON TABLE ingest.reordered_days IS
    'UTC days of a readings table rewritten in (device_id, time) order; rows stored later are not reordered.';

-- A fresh database starts with its reading partitions from three months back to a year ahead; the function
-- is defined under repeatable/, after this file, so the first call is there
-- (repeatable/function.flux.ensure_reading_partitions.sql).
