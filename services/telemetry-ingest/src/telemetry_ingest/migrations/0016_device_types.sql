-- One list of device types (DESIGN section 4), the same as gridloop_common.contracts.DeviceType.
--
-- Before this, any text was accepted and the services disagreed on it: the device-agent and the scheduler
-- drove a device typed 'battery' or 'storage' as a battery, while the upstream upload took only 'bess', so
-- such a battery was controlled but never reported upstream. Legacy spellings of a battery (and the type
-- names' case) become the canonical name here; from now on any other type is refused by the database, so a
-- registration through the REST API with an unknown type answers 400 (23514) naming this constraint.

UPDATE flux.mg_device_registry SET type = 'bess'
WHERE lower(btrim(type)) IN ('battery', 'storage', 'electric_storage', 'bess') AND type <> 'bess';

UPDATE flux.mg_device_registry SET type = lower(btrim(type))
WHERE type <> lower(btrim(type))
  AND lower(btrim(type)) IN ('meter', 'space_heating', 'water_heater', 'on_off_ev_charger',
                             'electric_vehicle_v1g', 'electric_vehicle_v2g');

ALTER TABLE flux.mg_device_registry ADD CONSTRAINT mg_device_registry_type_check
    CHECK (type IN ('bess', 'meter', 'space_heating', 'water_heater', 'on_off_ev_charger',
                    'electric_vehicle_v1g', 'electric_vehicle_v2g')) NOT VALID;

-- A row of some other type (no service ever used it) must not stop the service from starting: it stays,
-- the constraint holds for every new or changed row, and the warning names what an operator has to fix.
DO $$
DECLARE
    unknown text;
BEGIN
    SELECT string_agg(format('%s (%s)', name, type), ', ' ORDER BY name) INTO unknown
    FROM flux.mg_device_registry
    WHERE type NOT IN ('bess', 'meter', 'space_heating', 'water_heater', 'on_off_ev_charger',
                       'electric_vehicle_v1g', 'electric_vehicle_v2g');
    IF unknown IS NULL THEN
        ALTER TABLE flux.mg_device_registry VALIDATE CONSTRAINT mg_device_registry_type_check;
    ELSE
        RAISE WARNING 'devices of an unknown type, ignored by every service until their type is fixed: %', unknown;
    END IF;
END
$$;
