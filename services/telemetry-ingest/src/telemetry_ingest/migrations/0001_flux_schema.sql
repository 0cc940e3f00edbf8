-- Schema flux (seed 001): device registry, BESS and meter readings, market data, and the API roles.
--
-- Readings tables are range-partitioned by month on time, with a default partition so that a reading
-- from any date is accepted; flux.ensure_reading_partitions creates the monthly partitions ahead of time
-- (the service calls it daily) and moves any rows already parked in the default partition.
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
    type text NOT NULL,                  -- bess, meter, ...
    site text NOT NULL,
    -- Limits and address, e.g. {"capacity_kwh": 13.5, "max_power_kw": 5,
    --   "modbus": {"host": "10.0.0.5", "port": 502, "unit_id": 1, "profile": "sunspec"}}
    metadata jsonb,
    active boolean NOT NULL DEFAULT true
);
CREATE INDEX IF NOT EXISTS mg_device_registry_site ON flux.mg_device_registry (site);
CREATE INDEX IF NOT EXISTS mg_device_registry_type ON flux.mg_device_registry (type);

-- No foreign key to the registry: the origin has none, and a reading must never be lost because its
-- device was registered late.
CREATE TABLE IF NOT EXISTS flux.mg_bess_readings (
    time timestamptz NOT NULL,
    device_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    soe real NOT NULL CHECK (soe >= 0 AND soe <= 100),   -- percent (DESIGN §5; the origin stored kWh)
    target_power real NOT NULL,                          -- kW, positive charges
    available_inverter_blocks smallint,
    command_source smallint,                             -- 0 manual, 1 NIV chase, ... 5 Axle dispatch
    real_power_mode smallint,                            -- origin 0010: Tesla real power mode
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

-- Creates the monthly partitions (UTC months) of both readings tables for from_month and the
-- months_ahead months after it; returns how many it created. Rows of such a month already parked in
-- the default partition are moved into the new partition, since PostgreSQL refuses to attach a
-- partition whose range the default partition still holds rows for.
CREATE OR REPLACE FUNCTION flux.ensure_reading_partitions(from_month date, months_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER   -- the tables' owner creates partitions; only service_role may call it (0003)
SET search_path = pg_catalog
AS $$
DECLARE
    parent text;
    step integer;
    month_start timestamptz;
    month_end timestamptz;
    partition_name text;
    created integer := 0;
BEGIN
    -- Two callers at once (replicas starting together) would both try to create the same tables.
    PERFORM pg_advisory_xact_lock(hashtextextended('flux.ensure_reading_partitions', 0));
    FOREACH parent IN ARRAY ARRAY['mg_bess_readings', 'mg_meter_readings'] LOOP
        FOR step IN 0..months_ahead LOOP
            month_start := (date_trunc('month', from_month::timestamp) + make_interval(months => step))
                AT TIME ZONE 'UTC';
            month_end := (date_trunc('month', from_month::timestamp) + make_interval(months => step + 1))
                AT TIME ZONE 'UTC';
            partition_name := parent || to_char(month_start AT TIME ZONE 'UTC', '"_y"YYYY"m"MM');
            CONTINUE WHEN to_regclass(format('flux.%I', partition_name)) IS NOT NULL;
            EXECUTE format('CREATE TABLE flux.%I (LIKE flux.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           partition_name, parent);
            EXECUTE format('WITH moved AS (DELETE FROM flux.%I WHERE time >= $1 AND time < $2 RETURNING *) '
                           'INSERT INTO flux.%I SELECT * FROM moved', parent || '_default', partition_name)
                USING month_start, month_end;
            EXECUTE format('ALTER TABLE flux.%I ATTACH PARTITION flux.%I FOR VALUES FROM (%L) TO (%L)',
                           parent, partition_name, month_start, month_end);
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

SELECT flux.ensure_reading_partitions((now() - interval '3 months')::date, 15);
