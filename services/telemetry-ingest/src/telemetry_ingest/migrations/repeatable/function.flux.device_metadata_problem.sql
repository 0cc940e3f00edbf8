-- The first problem of a metadata document, as "<field>: <what is wrong>", in the contract's field order; NULL
-- when it obeys the contract.
CREATE OR REPLACE FUNCTION flux.device_metadata_problem(metadata jsonb)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
DECLARE
    modbus jsonb := metadata -> 'modbus';
    ocpp jsonb := metadata -> 'ocpp';
    ev jsonb := metadata -> 'ev';
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
    -- An EV charger's OCPP identity, version and password hash (gridloop_common's OcppEndpoint).
    IF ocpp IS NOT NULL AND jsonb_typeof(ocpp) <> 'null' THEN
        IF jsonb_typeof(ocpp) <> 'object' THEN
            RETURN 'metadata.ocpp: must be a JSON object';
        END IF;
        IF NOT ocpp ? 'id' THEN
            RETURN 'metadata.ocpp.id: required';
        END IF;
        problem := flux.device_metadata_value_problem(ocpp -> 'id', 'string', false);
        IF problem IS NULL AND length(ocpp ->> 'id') > 48 THEN
            problem := 'must have at most 48 characters';
        END IF;
        IF problem IS NOT NULL THEN
            RETURN format('metadata.ocpp.id: %s', problem);
        END IF;
        problem := flux.device_metadata_value_problem(ocpp -> 'version', 'string', true);
        IF problem IS NULL AND jsonb_typeof(ocpp -> 'version') = 'string'
                AND ocpp ->> 'version' NOT IN ('1.6', '2.0.1', '2.1') THEN
            problem := 'must be 1.6, 2.0.1 or 2.1';
        END IF;
        IF problem IS NOT NULL THEN
            RETURN format('metadata.ocpp.version: %s', problem);
        END IF;
        problem := flux.device_metadata_value_problem(ocpp -> 'password_sha256', 'string', true);
        IF problem IS NULL AND jsonb_typeof(ocpp -> 'password_sha256') = 'string'
                AND ocpp ->> 'password_sha256' !~ '^[0-9a-f]{64}$' THEN
            problem := 'must be 64 lowercase hexadecimal digits (a SHA-256)';
        END IF;
        IF problem IS NOT NULL THEN
            RETURN format('metadata.ocpp.password_sha256: %s', problem);
        END IF;
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
    -- An EV charger's electrical limits, after ac_power_sign as in the contract's field order.
    problem := flux.device_metadata_value_problem(metadata -> 'phases', 'integer', true);
    IF problem IS NULL AND jsonb_typeof(metadata -> 'phases') = 'number' AND metadata ->> 'phases' NOT IN ('1', '3') THEN
        problem := 'must be 1 or 3';
    END IF;
    IF problem IS NOT NULL THEN
        RETURN format('metadata.phases: %s', problem);
    END IF;
    problem := flux.device_metadata_value_problem(metadata -> 'min_current_a', 'number', true, 0, true);
    IF problem IS NOT NULL THEN
        RETURN format('metadata.min_current_a: %s', problem);
    END IF;
    -- An EV charger's car for planning (gridloop_common's ElectricVehicleDefaults), last as in the contract.
    IF ev IS NOT NULL AND jsonb_typeof(ev) <> 'null' THEN
        IF jsonb_typeof(ev) <> 'object' THEN
            RETURN 'metadata.ev: must be a JSON object';
        END IF;
        FOR field, problem IN VALUES
            ('capacity_kwh', CASE WHEN NOT ev ? 'capacity_kwh' THEN 'required'
                ELSE flux.device_metadata_value_problem(ev -> 'capacity_kwh', 'number', false, 0, true) END),
            ('departure', CASE WHEN NOT ev ? 'departure' THEN 'required'
                ELSE flux.device_metadata_clock_time_problem(ev -> 'departure', false) END),
            ('target_soc_pct', CASE WHEN NOT ev ? 'target_soc_pct' THEN 'required'
                ELSE flux.device_metadata_value_problem(ev -> 'target_soc_pct', 'number', false, 0, false, 100) END),
            ('arrival', flux.device_metadata_clock_time_problem(ev -> 'arrival', true)),
            ('initial_soc_pct', flux.device_metadata_value_problem(ev -> 'initial_soc_pct', 'number', true, 0, false, 100))
        LOOP
            IF problem IS NOT NULL THEN
                RETURN format('metadata.ev.%s: %s', field, problem);
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;
