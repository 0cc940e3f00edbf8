-- Change feed for the realtime API: inserted readings are announced with pg_notify on 'flux_changes',
-- so every API replica's LISTEN connection sees them whichever ingest replica (or REST client) wrote them.
--
-- Statement-level with a transition table: a COPY or bulk INSERT of 10k rows costs a few set-based
-- queries, not 10k trigger calls. Only rows actually inserted are in the transition table, so a batch
-- redelivered into ON CONFLICT DO NOTHING announces nothing. Notifications are sent at commit and not
-- at all on rollback, which is exactly when subscribers should hear of a row.
--
-- NOTIFY payloads must stay under 8000 bytes. Rows are grouped into chunks by the running total of
-- their JSON lengths (a chunk closes after about 6000 bytes). A readings row has only fixed-width
-- columns, so its JSON is under 1.5 kB and a chunk stays below 6000 + 1500 + the envelope < 8000.
-- Payload: {"schema","table","type":"INSERT","commit_timestamp","records":[row, ...]}.
CREATE FUNCTION flux.notify_reading_inserts()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    envelope text := json_build_object(
        'schema', TG_TABLE_SCHEMA,
        'table', TG_TABLE_NAME,
        'type', 'INSERT',
        -- The commit time is not known inside the transaction; the statement's end is the closest.
        'commit_timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::text;
BEGIN
    PERFORM pg_notify(
        'flux_changes',
        left(envelope, length(envelope) - 1) || ',"records":[' || chunk.records || ']}'
    )
    FROM (
        SELECT string_agg(sized.row_json, ',' ORDER BY sized.position) AS records
        FROM (
            SELECT
                numbered.row_json,
                numbered.position,
                sum(octet_length(numbered.row_json) + 1) OVER (ORDER BY numbered.position) / 6000 AS chunk_number
            FROM (
                SELECT to_jsonb(inserted_rows)::text AS row_json, row_number() OVER () AS position
                FROM inserted_rows
            ) AS numbered
        ) AS sized
        GROUP BY sized.chunk_number
    ) AS chunk;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION flux.notify_reading_inserts() FROM PUBLIC;

CREATE TRIGGER realtime_after_insert
    AFTER INSERT ON flux.mg_bess_readings
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flux.notify_reading_inserts();
CREATE TRIGGER realtime_after_insert
    AFTER INSERT ON flux.mg_meter_readings
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flux.notify_reading_inserts();
