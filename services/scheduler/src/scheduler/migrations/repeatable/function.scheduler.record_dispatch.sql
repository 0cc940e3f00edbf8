-- One of the lifecycle's writes as one statement: receiving a command, recording a dispatch and recording an
-- agent outcome inside one transaction would otherwise cost several round trips apiece. The decisions stay in
-- Python; this function only writes what Python decided, atomically. Parameters carry a p_ prefix so they
-- never shadow a column.

-- Records what one pass of the dispatcher published: the timers fired, each device's commands settled
-- (the winner active, the ended completed, the rest scheduled) with a history line per change, the
-- dispatch history, and an OK acknowledgement for every cancellation whose stop was sent.
CREATE OR REPLACE FUNCTION scheduler.record_dispatch(
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
