-- Who may do what in schema flux, as Supabase's keys map to roles: anon reads, authenticated reads and
-- writes readings, service_role does everything. Row-level security is on for every exposed table
-- (an exposed table without it is readable by any role that is granted SELECT on it), with policies
-- that state these rules; the tables' owner (the service's own connection) is not subject to them.

-- The service's login role switches to the request's role with SET LOCAL ROLE, which needs membership.
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT anon, authenticated, service_role TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA flux TO anon, authenticated, service_role;

GRANT SELECT ON ALL TABLES IN SCHEMA flux TO anon, authenticated;
GRANT INSERT ON flux.mg_bess_readings, flux.mg_meter_readings TO authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA flux TO service_role;
GRANT ALL ON ALL SEQUENCES IN SCHEMA flux TO service_role;
-- Partitions created later by flux.ensure_reading_partitions get the same rights.
ALTER DEFAULT PRIVILEGES IN SCHEMA flux GRANT SELECT ON TABLES TO anon, authenticated;
ALTER DEFAULT PRIVILEGES IN SCHEMA flux GRANT ALL ON TABLES TO service_role;

-- Functions are executable by PUBLIC by default. The RPCs and the pure helpers they call stay so;
-- maintenance and trigger functions do not.
REVOKE EXECUTE ON FUNCTION flux.ensure_reading_partitions(date, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flux.refresh_meter_rollups(uuid[], timestamptz[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION flux.meter_readings_changed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.ensure_reading_partitions(date, integer) TO service_role;
GRANT EXECUTE ON FUNCTION flux.refresh_meter_rollups(uuid[], timestamptz[]) TO service_role;

ALTER TABLE flux.mg_device_registry ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.mg_bess_readings ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.mg_meter_readings ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.market_data ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.market_data_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE flux.meter_reading_rollups ENABLE ROW LEVEL SECURITY;

CREATE POLICY read_all ON flux.mg_device_registry FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.mg_bess_readings FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.mg_meter_readings FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.market_data FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.market_data_types FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY read_all ON flux.meter_reading_rollups FOR SELECT TO anon, authenticated USING (true);

CREATE POLICY insert_readings ON flux.mg_bess_readings FOR INSERT TO authenticated WITH CHECK (true);
CREATE POLICY insert_readings ON flux.mg_meter_readings FOR INSERT TO authenticated WITH CHECK (true);

CREATE POLICY service_all ON flux.mg_device_registry FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.mg_bess_readings FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.mg_meter_readings FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.market_data FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.market_data_types FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY service_all ON flux.meter_reading_rollups FOR ALL TO service_role USING (true) WITH CHECK (true);
