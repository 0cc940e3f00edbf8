-- Stores one scheduler.lifecycle.LifecyclePlan (its JSON document), in one statement and one transaction. It
-- decides nothing: every state, history line and acknowledgement is in the plan, decided in Python. What it
-- keeps to itself is storage's own work: storing a version or an outcome once, and refusing a plan decided on
-- what has changed since (the guard). Sections run in the plan's order; an absent key is nothing to do.
-- Returns 'applied', 'duplicate' (the version or outcome was stored already: nothing else is written) or
-- 'changed' (the guard no longer holds: nothing is written, decide again).
CREATE OR REPLACE FUNCTION scheduler.store_plan(p_plan jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    guard constant jsonb := p_plan->'guard';
    stored_updated_at timestamptz;
    stored_state text;
    acks_due boolean := false;
    released integer := 0;
BEGIN
    IF guard IS NOT NULL THEN
        -- Deliveries of the same command serialise here; different commands proceed in parallel.
        PERFORM pg_advisory_xact_lock(hashtext(guard->>'command_id'));
        SELECT updated_at, state INTO stored_updated_at, stored_state
        FROM scheduler.commands WHERE command_id = (guard->>'command_id')::uuid FOR UPDATE;
        IF stored_updated_at IS DISTINCT FROM (guard->>'seen_updated_at')::timestamptz
           OR coalesce(stored_state IN (SELECT jsonb_array_elements_text(guard->'running_states')), false)
              IS DISTINCT FROM (guard->>'seen_running')::boolean THEN
            RETURN 'changed';
        END IF;
    END IF;

    IF p_plan ? 'plan_guard' THEN
        -- Plans for one device serialise here, and a plan decided before a newer one was stored is refused.
        PERFORM pg_advisory_xact_lock(hashtext('plan:' || (p_plan->'plan_guard'->>'device_id')));
        IF (SELECT max(issued_at) FROM scheduler.device_plans WHERE device_id = p_plan->'plan_guard'->>'device_id')
           IS DISTINCT FROM (p_plan->'plan_guard'->>'newest_issued_at')::timestamptz THEN
            RETURN 'changed';
        END IF;
    END IF;

    IF p_plan ? 'version' THEN
        INSERT INTO scheduler.command_versions (command_id, updated_at, event_type, correlation_id, command)
        SELECT command_id, updated_at, event_type, correlation_id, command
        FROM jsonb_populate_record(NULL::scheduler.command_versions, p_plan->'version')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;

    IF p_plan ? 'release' THEN
        -- Before the outcome is stored once: the agent may report an action failed, then applied on a retry,
        -- with the same action id. As due as when they were queued: a retried ack keeps its backoff.
        WITH freed AS (
            UPDATE scheduler.ack_outbox
            SET release_action_id = NULL,
                next_attempt_at = CASE WHEN attempts = 0 THEN created_at ELSE next_attempt_at END
            WHERE release_action_id = (p_plan->'release'->>'action_id')::uuid AND delivered_at IS NULL
            RETURNING command_id
        )
        INSERT INTO scheduler.command_history (command_id, kind, detail)
        SELECT command_id, 'released', p_plan->'release'->>'detail' FROM freed;
        GET DIAGNOSTICS released = ROW_COUNT;
    END IF;

    IF p_plan ? 'outcome' THEN
        INSERT INTO scheduler.device_outcomes (action_id, command_id, device_id, applied, reason, applied_setpoint_w,
            observed_at)
        SELECT action_id, command_id, device_id, applied, reason, applied_setpoint_w, observed_at
        FROM jsonb_populate_record(NULL::scheduler.device_outcomes, p_plan->'outcome')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;

    IF p_plan ? 'hold_acks' THEN
        UPDATE scheduler.ack_outbox o SET release_action_id = (p_plan->'hold_acks'->>'action_id')::uuid
        FROM scheduler.commands c
        WHERE c.command_id = o.command_id AND c.device_id = p_plan->'hold_acks'->>'device_id'
          AND o.release_action_id IS NOT NULL AND o.delivered_at IS NULL;
    END IF;

    IF p_plan ? 'stale_command_id' THEN
        UPDATE scheduler.commands SET stale_versions_ignored = stale_versions_ignored + 1
        WHERE command_id = (p_plan->>'stale_command_id')::uuid;
    END IF;

    IF p_plan ? 'device_plan' THEN
        INSERT INTO scheduler.device_plans (plan_id, device_id, run_id, kind, issued_at, steps)
        SELECT plan_id, device_id, run_id, kind, issued_at, steps
        FROM jsonb_populate_record(NULL::scheduler.device_plans, p_plan->'device_plan')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;

    IF p_plan ? 'commands' THEN
        INSERT INTO scheduler.commands (command_id, device_id, created_at, updated_at, starts_at, ends_at,
            upstream_status, state, state_reason, command, correlation_id, source)
        SELECT command_id, device_id, created_at, updated_at, starts_at, ends_at, upstream_status, state,
            state_reason, command, correlation_id, source
        FROM jsonb_populate_recordset(NULL::scheduler.commands, p_plan->'commands')
        ON CONFLICT (command_id) DO UPDATE SET
            device_id = EXCLUDED.device_id, created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
            upstream_status = EXCLUDED.upstream_status, state = EXCLUDED.state,
            state_reason = EXCLUDED.state_reason, command = EXCLUDED.command, source = EXCLUDED.source,
            correlation_id = coalesce(EXCLUDED.correlation_id, scheduler.commands.correlation_id),
            changed_at = now();
    END IF;

    IF p_plan ? 'last_outcome' THEN
        UPDATE scheduler.commands SET last_outcome = p_plan->'last_outcome'->'outcome', changed_at = now()
        WHERE command_id = (p_plan->'last_outcome'->>'command_id')::uuid;
    END IF;

    IF p_plan ? 'cancel_timers_of' THEN
        DELETE FROM scheduler.timers
        WHERE command_id IN (SELECT jsonb_array_elements_text(p_plan->'cancel_timers_of')::uuid) AND fired_at IS NULL;
    END IF;

    IF p_plan ? 'timers' THEN
        INSERT INTO scheduler.timers (device_id, command_id, kind, due_at)
        SELECT device_id, command_id, kind, due_at
        FROM jsonb_populate_recordset(NULL::scheduler.timers, p_plan->'timers');
    END IF;

    IF p_plan ? 'cancel_timers_of' OR p_plan ? 'timers' THEN
        PERFORM pg_notify('scheduler_timers', '');
    END IF;

    IF p_plan ? 'fired' THEN
        UPDATE scheduler.timers SET fired_at = fired.fired_at, action_id = fired.action_id
        FROM jsonb_populate_recordset(NULL::scheduler.timers, p_plan->'fired') AS fired
        WHERE scheduler.timers.id = fired.id;
    END IF;

    IF p_plan ? 'transitions' THEN
        -- Each moves only from the state the plan saw, and brings its history line and acknowledgement with it.
        WITH wanted AS (
            SELECT * FROM ROWS FROM (jsonb_to_recordset(p_plan->'transitions') AS (command_id uuid,
                from_states text[], to_state text, reason text, history_detail text, ack_status text,
                ack_reason text, sources text[])) WITH ORDINALITY AS t(command_id, from_states, to_state, reason,
                history_detail, ack_status, ack_reason, sources, position)
        ), moved AS (
            UPDATE scheduler.commands c
            SET state = wanted.to_state, state_reason = coalesce(wanted.reason, c.state_reason), changed_at = now()
            FROM wanted
            WHERE c.command_id = wanted.command_id AND c.state = ANY(wanted.from_states)
              AND c.source = ANY(wanted.sources)
            RETURNING c.command_id, wanted.to_state, wanted.history_detail, wanted.ack_status, wanted.ack_reason,
                wanted.position
        ), history AS (
            INSERT INTO scheduler.command_history (command_id, kind, detail)
            SELECT command_id, to_state, history_detail FROM moved WHERE history_detail IS NOT NULL ORDER BY position
        )
        INSERT INTO scheduler.ack_outbox (command_id, device_status, device_status_reason)
        SELECT command_id, ack_status, ack_reason FROM moved WHERE ack_status IS NOT NULL ORDER BY position;
        acks_due := FOUND;
    END IF;

    IF p_plan ? 'history' THEN
        INSERT INTO scheduler.command_history (command_id, kind, detail)
        SELECT entry.command_id, entry.kind, entry.detail
        FROM ROWS FROM (jsonb_to_recordset(p_plan->'history') AS (command_id uuid, kind text, detail text))
            WITH ORDINALITY AS entry(command_id, kind, detail, position)
        ORDER BY entry.position;
    END IF;

    IF p_plan ? 'acks' THEN
        INSERT INTO scheduler.ack_outbox (command_id, device_status, device_status_reason, next_attempt_at,
            release_action_id)
        SELECT ack.command_id, ack.device_status, ack.device_status_reason, coalesce(ack.next_attempt_at, now()),
            ack.release_action_id
        FROM ROWS FROM (jsonb_to_recordset(p_plan->'acks') AS (command_id uuid, device_status text,
            device_status_reason text, next_attempt_at timestamptz, release_action_id uuid))
            WITH ORDINALITY AS ack(command_id, device_status, device_status_reason, next_attempt_at,
                release_action_id, position)
        ORDER BY ack.position;
        -- A held acknowledgement is not due yet: waking the sender for it would find nothing.
        acks_due := acks_due OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_plan->'acks') AS ack WHERE ack->>'next_attempt_at' IS NULL);
    END IF;

    IF acks_due OR released > 0 THEN
        PERFORM pg_notify('scheduler_acks', '');
    END IF;
    RETURN 'applied';
END;
$$;
