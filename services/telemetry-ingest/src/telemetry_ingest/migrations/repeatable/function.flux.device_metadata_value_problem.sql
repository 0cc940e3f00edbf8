-- One field's value: NULL when it obeys, else what is wrong with it. `value` NULL: the key is absent.
CREATE OR REPLACE FUNCTION flux.device_metadata_value_problem(
    value jsonb, kind text, nullable boolean, low numeric DEFAULT NULL, low_exclusive boolean DEFAULT false,
    high numeric DEFAULT NULL
)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
DECLARE
    number numeric;
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) = 'null' THEN
        RETURN CASE WHEN nullable THEN NULL ELSE 'must not be null' END;
    END IF;
    IF kind = 'string' THEN
        IF jsonb_typeof(value) <> 'string' THEN
            RETURN 'must be a string';
        END IF;
        RETURN CASE WHEN length(value #>> '{}') = 0 THEN 'must not be empty' END;
    END IF;
    IF jsonb_typeof(value) <> 'number' THEN
        RETURN format('must be a number, not %s', jsonb_typeof(value));
    END IF;
    -- jsonb keeps a number's written scale: 502.0 reaches the services as a float, which an integer refuses.
    IF kind = 'integer' AND (value #>> '{}') !~ '^-?[0-9]+$' THEN
        RETURN 'must be an integer';
    END IF;
    number := (value #>> '{}')::numeric;
    IF low IS NOT NULL AND low_exclusive AND number <= low THEN
        RETURN format('must be greater than %s', low);
    END IF;
    IF low IS NOT NULL AND NOT low_exclusive AND number < low THEN
        RETURN format('must be greater than or equal to %s', low);
    END IF;
    IF high IS NOT NULL AND number > high THEN
        RETURN format('must be less than or equal to %s', high);
    END IF;
    RETURN NULL;
END
$$;
