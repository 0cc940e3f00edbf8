-- One of the lifecycle's writes as one statement: receiving a command, recording a dispatch and recording an
-- agent outcome inside one transaction would otherwise cost several round trips apiece. The decisions stay in
-- Python; this function only writes what Python decided, atomically. Parameters carry a p_ prefix so they
-- never shadow a column.

-- Records one agent outcome once. A failure of a command in force fails the command and queues a FAILED
-- acknowledgement. Returns false for a redelivered outcome, which changes nothing.
CREATE OR REPLACE FUNCTION scheduler.record_outcome(
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
