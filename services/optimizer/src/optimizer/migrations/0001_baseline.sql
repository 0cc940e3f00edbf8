-- The optimizer's tables, as a fresh database gets them: its runs, the tariffs in force and the plans, versioned
-- per site and device (docs/design.md §8). Its functions (the one-round-trip writes) each have their file under
-- repeatable/, applied after this one and re-applied whenever they change.
--
-- Schema optimizer is the service's own: nothing is granted to the API roles, so no API key can read it. Sites
-- (time zone, grid limits) are telemetry-ingest's flux.mg_sites, read from there.
CREATE SCHEMA IF NOT EXISTS optimizer;

-- The tariffs posted for a local day (POST /flattariff, /toutariff, /shift-consumption-tariff). The tariff in
-- force for a site and a day is the latest posted for that day whose scope holds the site (or is every site).
CREATE TABLE optimizer.tariffs (
    tariff_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    day date NOT NULL,                    -- the local day, at each site in its own time zone
    scope text[],                         -- site names, sorted; null: every site
    kind text NOT NULL CHECK (kind IN ('flat', 'time_of_use', 'shift_consumption')),
    -- The compiled definition (optimizer.tariffs.Tariff.body): base price, windows, and the request as received.
    body jsonb NOT NULL CHECK (jsonb_typeof(body) = 'object'),
    -- The price vectors computed when it was posted, {site: [price per 10-minute step of its local day]}.
    prices jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(prices) = 'object'),
    -- The statement's time, not the transaction's: two tariffs posted in one transaction keep their order.
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (scope IS NULL OR cardinality(scope) > 0)
);
CREATE INDEX tariffs_day ON optimizer.tariffs (day, created_at DESC);

-- One row per optimization: an MPC plan or re-plan, a day-ahead coordination round, a tariff day.
CREATE TABLE optimizer.runs (
    run_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind text NOT NULL CHECK (kind IN ('mpc', 'day_ahead', 'tariff')),
    scope text[],                         -- site names, sorted; null: every site
    inputs_digest text NOT NULL,          -- sha256 of the problem's inputs: equal inputs, equal digest
    state text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'optimal', 'time_limit', 'failed', 'superseded', 'stopped')),
    reason text,                          -- why failed, stopped or superseded
    objective double precision,           -- currency, the plan's cost including violation penalties
    build_ms double precision CHECK (build_ms >= 0),
    solve_ms double precision CHECK (solve_ms >= 0),
    -- The limits the plan could not meet: [{"limit", "site", "device", "step", "amount"}, ...].
    violations jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(violations) = 'array'),
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    day date,                             -- day-ahead and tariff runs: the local day planned
    iteration integer CHECK (iteration >= 0), -- day-ahead: the coordination round
    tariff_id uuid REFERENCES optimizer.tariffs (tariff_id),
    CHECK ((state = 'running') = (finished_at IS NULL)),
    CHECK (finished_at IS NULL OR finished_at >= started_at)
);
CREATE INDEX runs_started ON optimizer.runs (started_at DESC);
-- What a finished run supersedes: the earlier finished runs of the same kind, scope and day.
CREATE INDEX runs_kind_day ON optimizer.runs (kind, day, started_at DESC);

-- Each plan is one device's setpoint timeline from one run. Versions count up per (site, device): a new version
-- replaces the previous one entirely. Steps are equal in real time (a local day with a DST change is too, with 138
-- or 150 ten-minute steps): step i (from 0) runs from starts_at + i * step_seconds for step_seconds, with
-- setpoints_kw[i + 1], and expires at its end, so a plan nobody renews leaves no setpoint in force past ends_at.
-- Kept as start, step and values rather than per-step times: a run of 1,000 devices over 144 steps sends and
-- stores 144,000 numbers instead of three times as many.
CREATE TABLE optimizer.plans (
    site text NOT NULL,
    device text NOT NULL,                 -- flux.mg_device_registry.name
    version integer NOT NULL CHECK (version > 0),
    run_id uuid NOT NULL REFERENCES optimizer.runs (run_id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    starts_at timestamptz NOT NULL,       -- the first step's start
    step_seconds integer NOT NULL CHECK (step_seconds > 0),
    setpoints_kw double precision[] NOT NULL CHECK (cardinality(setpoints_kw) > 0),  -- positive charges / consumes
    ends_at timestamptz NOT NULL,         -- the last step's end: its setpoint expires here
    PRIMARY KEY (site, device, version),
    CHECK (ends_at = starts_at + make_interval(secs => step_seconds::double precision * cardinality(setpoints_kw)))
);
CREATE INDEX plans_run ON optimizer.plans (run_id);
CREATE INDEX plans_ends ON optimizer.plans (ends_at);

-- A plan as optimizer.finish_run receives it: one element of its array argument, sent in asyncpg's binary
-- format in the same round trip as the run's outcome.
CREATE TYPE optimizer.plan_input AS (
    site text,
    device text,
    starts_at timestamptz,
    step_seconds integer,
    setpoints_kw double precision[]
);
