-- One of the lifecycle's writes as one statement: receiving a command, recording a dispatch and recording an
-- agent outcome inside one transaction would otherwise cost several round trips apiece. The decisions stay in
-- Python; this function only writes what Python decided, atomically. Parameters carry a p_ prefix so they
-- never shadow a column.

-- Writes one received command version as Python decided it. Python decided from what it saw of the stored
-- command (its version and whether it was running); if that changed since, nothing is written and
-- 'changed' tells Python to look again. Returns 'applied', 'duplicate' (this version is stored already)
-- or 'changed'.
CREATE OR REPLACE FUNCTION scheduler.apply_command_version(
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
