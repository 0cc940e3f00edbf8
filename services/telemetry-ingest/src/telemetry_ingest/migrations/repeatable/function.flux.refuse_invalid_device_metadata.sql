-- A trigger rather than a CHECK constraint: it fires only when a row's metadata is written, so a device whose
-- metadata predates the contract can still be deactivated or renamed without fixing it first, and its
-- message names the field (a CHECK's names only the constraint).
CREATE OR REPLACE FUNCTION flux.refuse_invalid_device_metadata()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    problem text := flux.device_metadata_problem(NEW.metadata);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem
            USING ERRCODE = 'check_violation',
                  DETAIL = format('Device %s: its metadata does not obey the DeviceMetadata contract.', NEW.name),
                  COLUMN = 'metadata', TABLE = 'mg_device_registry', SCHEMA = 'flux';
    END IF;
    RETURN NEW;
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.refuse_invalid_device_metadata() FROM PUBLIC;
