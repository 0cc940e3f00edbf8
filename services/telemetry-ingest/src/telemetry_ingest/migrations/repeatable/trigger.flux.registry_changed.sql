-- Registry changes announced on 'flux_device_registry' (flux.notify_registry_change), so the device-agent,
-- which LISTENs there, drives a device registered through the REST API or the CLI within a second.
-- Statement-level and without the rows: the agent re-reads the registry whatever changed.
DROP TRIGGER IF EXISTS registry_changed ON flux.mg_device_registry;
CREATE TRIGGER registry_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flux.mg_device_registry
    FOR EACH STATEMENT EXECUTE FUNCTION flux.notify_registry_change();

-- An agent that started before the registry existed (or before this trigger) hears of it at once; sent at
-- commit. A spare notice only costs the agent one re-read.
SELECT pg_notify('flux_device_registry', 'CREATE');
