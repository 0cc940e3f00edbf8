-- A wall-clock time of metadata (HH:MM, 00:00-23:59), as gridloop_common's ElectricVehicleDefaults reads it: NULL
-- when it obeys, else what is wrong. `value` NULL: the key is absent.
CREATE OR REPLACE FUNCTION flux.device_metadata_clock_time_problem(value jsonb, nullable boolean)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) = 'null' THEN
        RETURN CASE WHEN nullable THEN NULL ELSE 'must not be null' END;
    END IF;
    IF jsonb_typeof(value) <> 'string' THEN
        RETURN 'must be a string';
    END IF;
    IF (value #>> '{}') !~ '^([01][0-9]|2[0-3]):[0-5][0-9]$' THEN
        RETURN 'must be a time of day as HH:MM';
    END IF;
    RETURN NULL;
END
$$;
