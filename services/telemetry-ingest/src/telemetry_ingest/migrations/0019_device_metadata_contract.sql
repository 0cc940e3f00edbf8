-- Registry metadata obeys gridloop_common.contracts.DeviceMetadata (docs/decisions/2026-12-07-device-metadata-contract.md).
--
-- Before this, each service parsed `metadata` with rules of its own: `max_power_kw: 0` made the scheduler refuse
-- every setpoint while the device-agent drove the device unlimited, and `max_power_kw: true` became a 1 kW limit
-- in the scheduler only. Every service now reads it through the contract and reports a row it refuses; here the
-- database refuses such a row when it is written, by any writer (REST API, CLI, psql), with SQLSTATE 23514 (the
-- REST API's 400) and a message naming the field, e.g. "metadata.max_power_kw: must be greater than 0".
--
-- The rules are the contract's, restated: strict numbers (no booleans, no numeric strings), the bounds of each
-- field, keys the contract does not name allowed. The agreement test (tests/test_device_metadata.py) runs one
-- table of examples through this function and through DeviceMetadata.from_registry, so the two cannot drift.

-- One field's value: NULL when it obeys, else what is wrong with it. `value` NULL: the key is absent.
CREATE FUNCTION flux.device_metadata_value_problem(
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

-- The first problem of a metadata document, as "<field>: <what is wrong>", in the contract's field order; NULL
-- when it obeys the contract.
CREATE FUNCTION flux.device_metadata_problem(metadata jsonb)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
DECLARE
    modbus jsonb := metadata -> 'modbus';
    problem text;
    field text;
    sign text;
BEGIN
    IF metadata IS NULL OR jsonb_typeof(metadata) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(metadata) <> 'object' THEN
        RETURN format('metadata: must be a JSON object, not %s', jsonb_typeof(metadata));
    END IF;
    IF modbus IS NOT NULL AND jsonb_typeof(modbus) <> 'null' THEN
        IF jsonb_typeof(modbus) <> 'object' THEN
            RETURN 'metadata.modbus: must be a JSON object';
        END IF;
        IF NOT modbus ? 'host' THEN
            RETURN 'metadata.modbus.host: required';
        END IF;
        FOR field, problem IN VALUES
            ('host', flux.device_metadata_value_problem(modbus -> 'host', 'string', false)),
            ('port', flux.device_metadata_value_problem(modbus -> 'port', 'integer', false, 1, false, 65535)),
            ('unit_id', flux.device_metadata_value_problem(modbus -> 'unit_id', 'integer', false, 0, false, 255)),
            ('profile', flux.device_metadata_value_problem(modbus -> 'profile', 'string', true))
        LOOP
            IF problem IS NOT NULL THEN
                RETURN format('metadata.modbus.%s: %s', field, problem);
            END IF;
        END LOOP;
    END IF;
    FOR field, problem IN VALUES
        ('max_power_kw', flux.device_metadata_value_problem(metadata -> 'max_power_kw', 'number', true, 0, true)),
        ('capacity_kwh', flux.device_metadata_value_problem(metadata -> 'capacity_kwh', 'number', true, 0, true)),
        ('backup_reserve_percentage',
         flux.device_metadata_value_problem(metadata -> 'backup_reserve_percentage', 'number', true, 0, false, 100)),
        ('state_of_health_percentage',
         flux.device_metadata_value_problem(metadata -> 'state_of_health_percentage', 'number', true, 0, true, 100)),
        ('site_meter', flux.device_metadata_value_problem(metadata -> 'site_meter', 'string', true)),
        ('ac_power_sign', flux.device_metadata_value_problem(metadata -> 'ac_power_sign', 'integer', false))
    LOOP
        IF problem IS NOT NULL THEN
            RETURN format('metadata.%s: %s', field, problem);
        END IF;
    END LOOP;
    sign := metadata ->> 'ac_power_sign';
    IF sign IS NOT NULL AND sign NOT IN ('1', '-1') THEN
        RETURN 'metadata.ac_power_sign: must be 1 or -1';
    END IF;
    RETURN NULL;
END
$$;

-- A trigger rather than a CHECK constraint: it fires only when a row's metadata is written, so a device whose
-- metadata predates this migration can still be deactivated or renamed without fixing it first, and its
-- message names the field (a CHECK's names only the constraint).
CREATE FUNCTION flux.refuse_invalid_device_metadata()
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

REVOKE EXECUTE ON FUNCTION flux.refuse_invalid_device_metadata() FROM PUBLIC;

CREATE TRIGGER metadata_contract
    BEFORE INSERT OR UPDATE OF metadata ON flux.mg_device_registry
    FOR EACH ROW EXECUTE FUNCTION flux.refuse_invalid_device_metadata();

-- Rows written before this migration stay (start-up must not fail on them); every service reports them as
-- unusable with the field named, and this warning lists them for the operator.
DO $$
DECLARE
    refused text;
BEGIN
    SELECT string_agg(format('%s (%s)', name, flux.device_metadata_problem(metadata)), ', ' ORDER BY name)
    INTO refused
    FROM flux.mg_device_registry
    WHERE flux.device_metadata_problem(metadata) IS NOT NULL;
    IF refused IS NOT NULL THEN
        RAISE WARNING 'devices whose metadata every service refuses until it is fixed: %', refused;
    END IF;
END
$$;
