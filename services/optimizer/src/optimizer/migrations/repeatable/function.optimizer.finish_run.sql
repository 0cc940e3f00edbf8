-- A run's outcome and its plans in one statement (OptimizerRepository.finish_run): the run leaves 'running', the
-- earlier finished runs of the same kind, scope and day become 'superseded' (when asked), and each plan is stored
-- as the next version for its site and device. Returns {"finished": true, "plans": [{"site", "device",
-- "version"}, ...]}, the versions stored.
--
-- A run that is no longer running (stopped while it solved) stores nothing and returns {"finished": false}: a
-- stop wins over a solve that was already under way.
CREATE OR REPLACE FUNCTION optimizer.finish_run(
    finished_run uuid,
    outcome text,
    outcome_reason text,
    outcome_objective double precision,
    outcome_build_ms double precision,
    outcome_solve_ms double precision,
    outcome_violations jsonb,
    outcome_finished_at timestamptz,
    new_plans optimizer.plan_input[],
    supersede boolean
)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    finished optimizer.runs;
    versions jsonb;
BEGIN
    UPDATE optimizer.runs AS run
    SET state = outcome, reason = outcome_reason, objective = outcome_objective, build_ms = outcome_build_ms,
        solve_ms = outcome_solve_ms, violations = coalesce(outcome_violations, '[]'::jsonb),
        finished_at = outcome_finished_at
    WHERE run.run_id = finished_run AND run.state = 'running'
    RETURNING run.* INTO finished;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('finished', false);
    END IF;
    IF supersede AND outcome IN ('optimal', 'time_limit') THEN
        UPDATE optimizer.runs AS earlier
        SET state = 'superseded', reason = format('superseded by run %s', finished_run)
        WHERE earlier.kind = finished.kind
          AND earlier.scope IS NOT DISTINCT FROM finished.scope
          AND earlier.day IS NOT DISTINCT FROM finished.day
          AND earlier.run_id <> finished_run
          AND earlier.state IN ('optimal', 'time_limit')
          AND earlier.started_at <= finished.started_at;
    END IF;
    IF coalesce(cardinality(new_plans), 0) = 0 THEN
        RETURN jsonb_build_object('finished', true, 'plans', '[]'::jsonb);
    END IF;
    -- Two runs finishing at once must not both take version n + 1 of a device: plan writes take turns, for the
    -- rest of this transaction only.
    PERFORM pg_advisory_xact_lock(hashtext('optimizer.plans'));
    WITH incoming AS (
        SELECT plan.site, plan.device, plan.starts_at, plan.step_seconds, plan.setpoints_kw
        FROM unnest(new_plans) AS plan
    ),
    latest AS (
        SELECT stored.site, stored.device, max(stored.version) AS version
        FROM optimizer.plans AS stored
        JOIN incoming ON incoming.site = stored.site AND incoming.device = stored.device
        GROUP BY stored.site, stored.device
    ),
    written AS (
        INSERT INTO optimizer.plans AS stored
            (site, device, version, run_id, starts_at, step_seconds, setpoints_kw, ends_at)
        SELECT incoming.site, incoming.device, coalesce(latest.version, 0) + 1, finished_run, incoming.starts_at,
               incoming.step_seconds, incoming.setpoints_kw,
               incoming.starts_at + make_interval(
                   secs => incoming.step_seconds::double precision * cardinality(incoming.setpoints_kw))
        FROM incoming
        LEFT JOIN latest ON latest.site = incoming.site AND latest.device = incoming.device
        RETURNING stored.site, stored.device, stored.version
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('site', written.site, 'device', written.device,
                                                 'version', written.version)), '[]'::jsonb)
    INTO versions
    FROM written;
    RETURN jsonb_build_object('finished', true, 'plans', versions);
END
$$;

-- Functions are executable by PUBLIC by default; this one is the optimizer's alone.
REVOKE EXECUTE ON FUNCTION optimizer.finish_run(
    uuid, text, text, double precision, double precision, double precision, jsonb, timestamptz,
    optimizer.plan_input[], boolean
) FROM PUBLIC;
