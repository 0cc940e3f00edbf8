-- Inserted readings announced to realtime subscribers (flux.notify_reading_inserts), once per statement.
DROP TRIGGER IF EXISTS realtime_after_insert ON flux.mg_bess_readings;
DROP TRIGGER IF EXISTS realtime_after_insert ON flux.mg_meter_readings;
DROP TRIGGER IF EXISTS realtime_after_insert ON flux.mg_ev_charger_readings;
CREATE TRIGGER realtime_after_insert
    AFTER INSERT ON flux.mg_bess_readings
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flux.notify_reading_inserts();
CREATE TRIGGER realtime_after_insert
    AFTER INSERT ON flux.mg_meter_readings
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flux.notify_reading_inserts();
CREATE TRIGGER realtime_after_insert
    AFTER INSERT ON flux.mg_ev_charger_readings
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flux.notify_reading_inserts();
