-- Every stored control names its source (scheduler.planning.ControlSource): the winner on a device is chosen by
-- the source's precedence, then by creation time, so a new source is a value, not a new code path. The upstream
-- commands stored so far are all of the one source that existed.
ALTER TABLE scheduler.commands
    ADD COLUMN source text NOT NULL DEFAULT 'upstream_command'
        CHECK (source IN ('site_cap', 'upstream_command', 'direct_control', 'plan'));

-- The lifecycle's writes are one function now (repeatable/function.scheduler.store_plan.sql), which stores what
-- scheduler.lifecycle decided; the functions that decided states and acknowledgements in SQL are gone.
DROP FUNCTION IF EXISTS scheduler.apply_command_version(uuid, timestamptz, text, text, jsonb, timestamptz, boolean,
    text, timestamptz, timestamptz, timestamptz, text, text, text, boolean, boolean, text[], timestamptz[], text[],
    text[], text, text);
DROP FUNCTION IF EXISTS scheduler.record_dispatch(timestamptz, bigint[], uuid[], text[], uuid[], uuid[], text[], text[],
    uuid[]);
DROP FUNCTION IF EXISTS scheduler.record_outcome(uuid, uuid, text, boolean, text, integer, timestamptz, jsonb, text);
DROP FUNCTION IF EXISTS scheduler.release_held_acks(uuid, boolean);
DELETE FROM public.gridloop_schema_repeatables
WHERE owner = 'scheduler'
  AND name IN ('function.scheduler.apply_command_version', 'function.scheduler.record_dispatch',
               'function.scheduler.record_outcome', 'function.scheduler.release_held_acks');
