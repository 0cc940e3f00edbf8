-- Inserted readings announced on 'flux_changes' for the realtime API, only while some subscriber watches the
-- table (ingest.realtime_interest): building every row's JSON costs about as much as storing the row.
-- SECURITY DEFINER: REST clients insert readings as anon/authenticated roles that may not read the ingest schema.
CREATE OR REPLACE FUNCTION flux.notify_reading_inserts()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog
AS $$
DECLARE
    envelope text;
BEGIN
    IF current_setting('gridloop.reordering', true) = 'on' THEN
        RETURN NULL;  -- ingest.reorder_readings_day moves rows without changing them
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM ingest.realtime_interest AS interest
        WHERE interest.schema_name = TG_TABLE_SCHEMA
          AND interest.table_name = TG_TABLE_NAME
          AND interest.expires_at > clock_timestamp()
    ) THEN
        RETURN NULL;
    END IF;
    envelope := json_build_object(
        'schema', TG_TABLE_SCHEMA,
        'table', TG_TABLE_NAME,
        'type', 'INSERT',
        -- The commit time is not known inside the transaction; the statement's end is the closest.
        'commit_timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::text;
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

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.notify_reading_inserts() FROM PUBLIC;
