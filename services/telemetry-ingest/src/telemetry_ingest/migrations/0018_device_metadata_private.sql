-- A device's metadata holds its controller's Modbus host, port and unit id, and Modbus has no authentication:
-- read with the anon key (public by design) it is a map of writable controllers. anon keeps SELECT on every
-- other column of the registry (column privileges, Supabase's column-level security); as in PostgREST, a
-- restricted role must then name its columns: `select=*` on the registry is a permission error for anon.
-- authenticated and service_role keep reading it.
REVOKE SELECT ON flux.mg_device_registry FROM anon;
GRANT SELECT (id, created_at, name, type, site, active) ON flux.mg_device_registry TO anon;
