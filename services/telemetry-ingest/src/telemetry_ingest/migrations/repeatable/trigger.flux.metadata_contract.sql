-- Registry metadata obeys gridloop_common.contracts.DeviceMetadata, for every writer
-- (flux.refuse_invalid_device_metadata; docs/decisions/2026-12-07-device-metadata-contract.md). Only writes
-- of metadata are checked: a row stored before the contract tightened can still be deactivated.
DROP TRIGGER IF EXISTS metadata_contract ON flux.mg_device_registry;
CREATE TRIGGER metadata_contract
    BEFORE INSERT OR UPDATE OF metadata ON flux.mg_device_registry
    FOR EACH ROW EXECUTE FUNCTION flux.refuse_invalid_device_metadata();

-- Rows stored before this version of the contract stay (start-up must not fail on them); every service reports
-- them as unusable with the field named, and this warning lists them for the operator.
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
