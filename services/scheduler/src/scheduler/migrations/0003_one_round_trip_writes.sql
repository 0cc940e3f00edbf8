-- The lifecycle's writes as one statement each. Receiving a command, recording a dispatch and recording an
-- agent outcome used to cost 6 to 13 round trips apiece inside one transaction, and on a busy 2-core host
-- the scheduler's time went to those syscalls. The decisions stay in Python (planning.py); these functions
-- only write what Python decided, atomically. Parameters carry a p_ prefix so they never shadow a column.

-- Writes one received command version as Python decided it. Python decided from what it saw of the stored
-- command (its version and whether it was running); if that changed since, nothing is written and
-- 'changed' tells Python to look again. Returns 'applied', 'duplicate' (this version is stored already)
-- or 'changed'.
CREATE FUNCTION scheduler.apply_command_version(
    p_command_id uuid,
    p_updated_at timestamptz,
    p_event_type text,
    p_correlation_id text,
    p_command jsonb,
    p_seen_updated_at timestamptz,      -- the stored version Python saw; null when there was none
    p_seen_running boolean,             -- whether that stored version was scheduled or active
    p_device_id text,
    p_created_at timestamptz,
    p_starts_at timestamptz,
    p_ends_at timestamptz,
    p_upstream_status text,
    p_state text,                       -- the command's new state; null leaves the command row alone (stale)
    p_state_reason text,
    p_count_stale boolean,
    p_replace_timers boolean,           -- drop the command's unfired timers and add the ones below
    p_timer_kinds text[],
    p_timer_due timestamptz[],
    p_history_kinds text[],
    p_history_details text[],
    p_ack_status text,                  -- OK or FAILED to queue an acknowledgement; null for none
    p_ack_reason text
)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    stored_updated_at timestamptz;
    stored_state text;
BEGIN
    -- Deliveries of the same command serialise here; different commands proceed in parallel.
    PERFORM pg_advisory_xact_lock(hashtext(p_command_id::text));
    SELECT updated_at, state INTO stored_updated_at, stored_state
    FROM scheduler.commands WHERE command_id = p_command_id FOR UPDATE;
    IF stored_updated_at IS DISTINCT FROM p_seen_updated_at
       OR coalesce(stored_state IN ('scheduled', 'active'), false) IS DISTINCT FROM p_seen_running THEN
        RETURN 'changed';
    END IF;

    INSERT INTO scheduler.command_versions (command_id, updated_at, event_type, correlation_id, command)
    VALUES (p_command_id, p_updated_at, p_event_type, p_correlation_id, p_command)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;

    IF p_count_stale THEN
        UPDATE scheduler.commands SET stale_versions_ignored = stale_versions_ignored + 1
        WHERE command_id = p_command_id;
    END IF;

    IF p_state IS NOT NULL THEN
        INSERT INTO scheduler.commands (command_id, device_id, created_at, updated_at, starts_at, ends_at,
            upstream_status, state, state_reason, command, correlation_id)
        VALUES (p_command_id, p_device_id, p_created_at, p_updated_at, p_starts_at, p_ends_at,
            p_upstream_status, p_state, p_state_reason, p_command, p_correlation_id)
        ON CONFLICT (command_id) DO UPDATE SET
            device_id = EXCLUDED.device_id, created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
            upstream_status = EXCLUDED.upstream_status, state = EXCLUDED.state,
            state_reason = EXCLUDED.state_reason, command = EXCLUDED.command,
            correlation_id = coalesce(EXCLUDED.correlation_id, scheduler.commands.correlation_id),
            changed_at = now();
    END IF;

    IF p_replace_timers THEN
        DELETE FROM scheduler.timers WHERE command_id = p_command_id AND fired_at IS NULL;
        INSERT INTO scheduler.timers (device_id, command_id, kind, due_at)
        SELECT p_device_id, p_command_id, kind, due_at FROM unnest(p_timer_kinds, p_timer_due) AS timer(kind, due_at);
        PERFORM pg_notify('scheduler_timers', '');
    END IF;

    INSERT INTO scheduler.command_history (command_id, kind, detail)
    SELECT p_command_id, entry.kind, entry.detail
    FROM unnest(p_history_kinds, p_history_details) WITH ORDINALITY AS entry(kind, detail, position)
    ORDER BY entry.position;

    IF p_ack_status IS NOT NULL THEN
        INSERT INTO scheduler.ack_outbox (command_id, device_status, device_status_reason)
        VALUES (p_command_id, p_ack_status, p_ack_reason);
        PERFORM pg_notify('scheduler_acks', '');
    END IF;
    RETURN 'applied';
END;
$$;

-- Records what one pass of the dispatcher published: the timers fired, each device's commands settled
-- (the winner active, the ended completed, the rest scheduled) with a history line per change, the
-- dispatch history, and an OK acknowledgement for every cancellation whose stop was sent.
CREATE FUNCTION scheduler.record_dispatch(
    p_now timestamptz,
    p_timer_ids bigint[],
    p_timer_action_ids uuid[],
    p_devices text[],
    p_active_command_ids uuid[],        -- per device, the winner; null when the device returns to default
    p_history_command_ids uuid[],
    p_history_kinds text[],
    p_history_details text[],
    p_stopped_command_ids uuid[]
)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE scheduler.timers SET fired_at = p_now, action_id = fired.action_id
    FROM unnest(p_timer_ids, p_timer_action_ids) AS fired(id, action_id)
    WHERE scheduler.timers.id = fired.id;

    WITH target AS (
        SELECT device_id, active_command_id FROM unnest(p_devices, p_active_command_ids) AS t(device_id, active_command_id)
    ), wanted AS (
        SELECT c.command_id, c.device_id,
               CASE WHEN c.command_id = target.active_command_id THEN 'active'
                    WHEN c.ends_at IS NOT NULL AND c.ends_at <= p_now THEN 'completed'
                    ELSE 'scheduled' END AS state
        FROM scheduler.commands c JOIN target ON target.device_id = c.device_id
        WHERE c.state IN ('scheduled', 'active')
    ), settled AS (
        UPDATE scheduler.commands c SET state = wanted.state, changed_at = now()
        FROM wanted
        WHERE c.command_id = wanted.command_id AND c.state IS DISTINCT FROM wanted.state
        RETURNING c.command_id, c.device_id, c.state
    )
    INSERT INTO scheduler.command_history (command_id, kind, detail)
    SELECT command_id, state, 'now ' || state || ' on ' || device_id FROM settled ORDER BY device_id, command_id;

    INSERT INTO scheduler.command_history (command_id, kind, detail)
    SELECT entry.command_id, entry.kind, entry.detail
    FROM unnest(p_history_command_ids, p_history_kinds, p_history_details) WITH ORDINALITY
        AS entry(command_id, kind, detail, position)
    ORDER BY entry.position;

    IF cardinality(p_stopped_command_ids) > 0 THEN
        INSERT INTO scheduler.ack_outbox (command_id, device_status)
        SELECT stopped, 'OK' FROM unnest(p_stopped_command_ids) WITH ORDINALITY AS s(stopped, position)
        ORDER BY s.position;
        PERFORM pg_notify('scheduler_acks', '');
    END IF;
END;
$$;

-- Records one agent outcome once. A failure of a command in force fails the command and queues a FAILED
-- acknowledgement. Returns false for a redelivered outcome, which changes nothing.
CREATE FUNCTION scheduler.record_outcome(
    p_action_id uuid,
    p_command_id uuid,
    p_device_id text,
    p_applied boolean,
    p_reason text,
    p_applied_setpoint_w integer,
    p_observed_at timestamptz,
    p_outcome jsonb,
    p_history_detail text
)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    command_state text;
BEGIN
    INSERT INTO scheduler.device_outcomes (action_id, command_id, device_id, applied, reason, applied_setpoint_w,
        observed_at)
    VALUES (p_action_id, p_command_id, p_device_id, p_applied, p_reason, p_applied_setpoint_w, p_observed_at)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_command_id IS NULL THEN
        RETURN true;
    END IF;
    INSERT INTO scheduler.command_history (command_id, kind, detail) VALUES (p_command_id, 'outcome', p_history_detail);
    UPDATE scheduler.commands SET last_outcome = p_outcome, changed_at = now()
    WHERE command_id = p_command_id
    RETURNING state INTO command_state;
    IF NOT p_applied AND command_state IN ('scheduled', 'active') THEN
        UPDATE scheduler.commands SET state = 'failed', state_reason = p_reason WHERE command_id = p_command_id;
        INSERT INTO scheduler.ack_outbox (command_id, device_status, device_status_reason)
        VALUES (p_command_id, 'FAILED', p_reason);
        PERFORM pg_notify('scheduler_acks', '');
    END IF;
    RETURN true;
END;
$$;
