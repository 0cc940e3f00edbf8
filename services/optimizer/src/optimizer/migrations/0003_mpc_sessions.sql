-- Receding-horizon MPCs started by POST /calculate_mpc (RPC optimizer.calculate_mpc): one row per MPC, so a
-- restarted optimizer finds the ones still active and resumes them (optimizer.mpc). Each re-plan is a run of
-- kind 'mpc' in optimizer.runs; this row holds what the next re-plan needs: the request and when to plan.
CREATE TABLE IF NOT EXISTS optimizer.mpc_sessions (
    session_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    scope text[],                         -- site names, sorted; null: every site
    -- The request as resolved (start and stop filled in): gridloop_common's MpcRequest as JSON.
    request jsonb NOT NULL CHECK (jsonb_typeof(request) = 'object'),
    state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'stopped', 'finished')),
    reason text,                          -- why stopped: "stopped by request", "replaced by ...", ...
    created_at timestamptz NOT NULL,
    stops_at timestamptz NOT NULL,        -- the request's stop: no re-plan starts at or after it
    last_run_id uuid REFERENCES optimizer.runs (run_id),
    last_planned_at timestamptz,          -- the start of the last re-plan's first step
    ended_at timestamptz,
    CHECK ((state = 'active') = (ended_at IS NULL))
);
-- At most one active MPC per scope: starting another replaces it (in one transaction).
CREATE UNIQUE INDEX IF NOT EXISTS mpc_sessions_active_scope
    ON optimizer.mpc_sessions ((coalesce(scope, '{}'::text[]))) WHERE state = 'active';

-- What a run planned, per site, for the answers and `gridloop plans show`: the grid import per step and each
-- battery's setpoints and SoC path ([{site, starts_at, step_seconds, import_kw[], devices: [{name, type,
-- setpoints[], soc_pct[]}], violations[]}]). optimizer.plans holds what the devices are told; this holds
-- what the plan expects of the site.
CREATE TABLE IF NOT EXISTS optimizer.run_details (
    run_id uuid PRIMARY KEY REFERENCES optimizer.runs (run_id) ON DELETE CASCADE,
    sites jsonb NOT NULL CHECK (jsonb_typeof(sites) = 'array')
);
