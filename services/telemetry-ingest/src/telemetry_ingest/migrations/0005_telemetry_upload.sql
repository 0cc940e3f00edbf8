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

-- Readings the upstream answered FAILED for, item by item; resent (the origin asks for that) until
-- accepted or until the uploader gives up after a few attempts, so one bad reading never blocks a device.
CREATE TABLE IF NOT EXISTS ingest.telemetry_upload_retries (
    device_id uuid NOT NULL,
    reading_time timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, reading_time)
);
