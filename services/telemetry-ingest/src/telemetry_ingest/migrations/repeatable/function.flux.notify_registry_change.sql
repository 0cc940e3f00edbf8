-- Registry changes announced on 'flux_device_registry', so the device-agent (which LISTENs there) drives a
-- device registered through the REST API or the CLI within a second instead of at its next periodic re-read.
--
-- Statement-level and without the rows: the agent re-reads the registry whatever changed, so a bulk insert
-- announces itself once, and a payload can never outgrow NOTIFY's 8000 bytes. Sent at commit, never on rollback.
CREATE OR REPLACE FUNCTION flux.notify_registry_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    PERFORM pg_notify('flux_device_registry', TG_OP);
    RETURN NULL;
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.notify_registry_change() FROM PUBLIC;
