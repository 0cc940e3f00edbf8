-- External forecasts of a site's non-controllable load and PV power (RPC optimizer.forecasts.put,
-- gridloop_common.contracts.forecasts.ExternalForecastRequest). One row per forecast received, as sent: the
-- optimizer merges the unexpired ones over its own forecast from telemetry, the latest received winning where
-- two overlap (optimizer.forecasts.merge_external). Rows expire; the writer deletes a site's expired rows of
-- the same quantity when it stores a new one, so the table holds what may still be used.
CREATE SCHEMA IF NOT EXISTS optimizer;

CREATE TABLE IF NOT EXISTS optimizer.external_forecasts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL,
    quantity text NOT NULL CONSTRAINT external_forecasts_quantity_check CHECK (quantity IN ('load', 'pv')),
    start_time timestamptz NOT NULL,
    step_minutes smallint NOT NULL CONSTRAINT external_forecasts_step_check CHECK (step_minutes BETWEEN 5 AND 60),
    -- kW per step from start_time; the span ends at start_time + step_minutes * cardinality(values_kw).
    values_kw double precision[] NOT NULL CONSTRAINT external_forecasts_values_check CHECK (cardinality(values_kw) >= 1),
    expires_at timestamptz NOT NULL,
    source text,
    received_at timestamptz NOT NULL,
    CONSTRAINT external_forecasts_expiry_check CHECK (expires_at > start_time)
);
-- The merge reads a site's live forecasts of one quantity over a horizon.
CREATE INDEX IF NOT EXISTS external_forecasts_site_quantity
    ON optimizer.external_forecasts (site, quantity, expires_at);
