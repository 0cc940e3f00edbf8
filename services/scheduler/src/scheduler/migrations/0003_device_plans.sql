-- The optimizer's plans as the scheduler received them, one row per plan version and device: stored once (a
-- redelivered plan changes nothing), and the newest issued_at per device is the plan in force (an older plan
-- arriving late is ignored). The plan's steps are controls in scheduler.commands with source 'plan'.
CREATE TABLE scheduler.device_plans (
    plan_id uuid PRIMARY KEY,
    device_id text NOT NULL,
    run_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('mpc', 'day_ahead', 'tariff')),
    issued_at timestamptz NOT NULL,
    steps integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_plans_device_issued ON scheduler.device_plans (device_id, issued_at DESC);

-- The running controls of one source on a device: what a new plan supersedes, and what a timer pass settles.
CREATE INDEX commands_device_source_state ON scheduler.commands (device_id, source, state);
