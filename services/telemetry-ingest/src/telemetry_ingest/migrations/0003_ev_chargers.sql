-- EV chargers (issue 18, docs/design.md §4): their meter values and their charging sessions, written by ingest from
-- the device-agent's telemetry.ev_charger and telemetry.ev_session messages and served by the Flux API.
--
-- Not partitioned, unlike the battery and meter readings: a charger reports about once a minute (OCPP's usual
-- MeterValues interval), so a thousand chargers make ~1.4 M rows a day where the meters make that in minutes; one
-- table with its unique key and a time index serves that without the partition and reorder upkeep.

-- No foreign key to the registry: a reading must never be lost because its device was registered late.
CREATE TABLE flux.mg_ev_charger_readings (
    time timestamptz NOT NULL,               -- when the agent received the meter values
    device_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    power_kw real,                           -- positive into the car, negative out of it (V2G)
    energy_import_kwh real,                  -- the charger's registers
    energy_export_kwh real,
    soc_pct real CHECK (soc_pct >= 0 AND soc_pct <= 100),   -- the car's, when the charger reports it
    connector_status text,                   -- OCPP connector status (Available, Charging, SuspendedEV, ...)
    transaction_id text,                     -- the charger's transaction while one runs
    CONSTRAINT mg_ev_charger_readings_device_time UNIQUE (device_id, time)
);
CREATE INDEX mg_ev_charger_readings_time ON flux.mg_ev_charger_readings (time DESC);

-- One row per OCPP transaction (plug-in to plug-out). The agent publishes it at the start and again at the end;
-- ingest upserts, keeping the first-known start figures and the last-known end figures, so order does not matter.
CREATE TABLE flux.mg_ev_sessions (
    session_id uuid PRIMARY KEY,             -- the agent's uuid5 of device, transaction id and plug-in time
    device_id uuid NOT NULL,
    transaction_id text NOT NULL,
    plugged_in_at timestamptz NOT NULL,
    plugged_out_at timestamptz,              -- null while the car is plugged in
    energy_kwh real,                         -- delivered to the car (register at plug-out minus at plug-in)
    initial_soc_pct real CHECK (initial_soc_pct >= 0 AND initial_soc_pct <= 100),
    final_soc_pct real CHECK (final_soc_pct >= 0 AND final_soc_pct <= 100),
    stop_reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mg_ev_sessions_device_plugged_in ON flux.mg_ev_sessions (device_id, plugged_in_at DESC);

-- Privileges as for mg_bess_readings (0001_baseline.sql): anon and authenticated read, authenticated may insert
-- readings (an ingestion credential), service_role does everything. Sessions are written by ingest only (and
-- service_role): a session is derived from a transaction's start and end, not a measurement a client reports.
GRANT SELECT ON flux.mg_ev_charger_readings, flux.mg_ev_sessions TO anon, authenticated;
GRANT INSERT ON flux.mg_ev_charger_readings TO authenticated;
GRANT ALL ON flux.mg_ev_charger_readings, flux.mg_ev_sessions TO service_role;

ALTER TABLE flux.mg_ev_charger_readings ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.mg_ev_sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON flux.mg_ev_charger_readings FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.mg_ev_sessions FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY insert_readings ON flux.mg_ev_charger_readings FOR INSERT TO authenticated WITH CHECK (true);
CREATE POLICY service_all ON flux.mg_ev_charger_readings FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.mg_ev_sessions FOR ALL TO service_role USING (true) WITH CHECK (true);
