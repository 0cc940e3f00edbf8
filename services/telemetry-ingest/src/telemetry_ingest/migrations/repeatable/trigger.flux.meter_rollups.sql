-- Every change to the meter readings keeps their rollups current (flux.meter_readings_changed): statement
-- triggers with transition tables, so a batch of readings refreshes its (device, period) pairs once.
DROP TRIGGER IF EXISTS meter_rollups_after_insert ON flux.mg_meter_readings;
DROP TRIGGER IF EXISTS meter_rollups_after_update ON flux.mg_meter_readings;
DROP TRIGGER IF EXISTS meter_rollups_after_delete ON flux.mg_meter_readings;
CREATE TRIGGER meter_rollups_after_insert
    AFTER INSERT ON flux.mg_meter_readings
    REFERENCING NEW TABLE AS new_readings
    FOR EACH STATEMENT EXECUTE FUNCTION flux.meter_readings_changed();
CREATE TRIGGER meter_rollups_after_update
    AFTER UPDATE ON flux.mg_meter_readings
    REFERENCING OLD TABLE AS old_readings NEW TABLE AS new_readings
    FOR EACH STATEMENT EXECUTE FUNCTION flux.meter_readings_changed();
CREATE TRIGGER meter_rollups_after_delete
    AFTER DELETE ON flux.mg_meter_readings
    REFERENCING OLD TABLE AS old_readings
    FOR EACH STATEMENT EXECUTE FUNCTION flux.meter_readings_changed();
