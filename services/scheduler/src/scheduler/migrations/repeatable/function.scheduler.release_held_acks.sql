-- Called with every agent outcome: an applied one makes the acks held for its action due at once (as due as
-- when they were queued), with a history line. Returns how many it released; a redelivery releases none.
CREATE OR REPLACE FUNCTION scheduler.release_held_acks(p_action_id uuid, p_applied boolean)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    released integer;
BEGIN
    IF NOT p_applied THEN
        RETURN 0;
    END IF;
    WITH freed AS (
        UPDATE scheduler.ack_outbox
        SET release_action_id = NULL,
            next_attempt_at = CASE WHEN attempts = 0 THEN created_at ELSE next_attempt_at END
        WHERE release_action_id = p_action_id AND delivered_at IS NULL
        RETURNING command_id
    )
    INSERT INTO scheduler.command_history (command_id, kind, detail)
    SELECT command_id, 'released', 'the agent confirmed the releasing write (action ' || p_action_id || ')'
    FROM freed;
    GET DIAGNOSTICS released = ROW_COUNT;
    IF released > 0 THEN
        PERFORM pg_notify('scheduler_acks', '');
    END IF;
    RETURN released;
END;
$$;
