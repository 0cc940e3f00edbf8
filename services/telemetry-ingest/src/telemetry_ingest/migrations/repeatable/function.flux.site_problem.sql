-- The first problem of a flux.mg_sites row's plain fields, as "<field>: <what is wrong>"; NULL when there is none.
-- The time zone is checked once per statement instead (flux.refuse_unknown_site_timezones): knowing whether a
-- name is an IANA zone means reading the zone list, tens of milliseconds, too slow to do for each row.
--
-- The same rules as gridloop_common.contracts.SiteParameters, which every service reads a row with.
CREATE OR REPLACE FUNCTION flux.site_problem(
    site_name text, import_limit_kw real, export_limit_kw real, site_meter text, metadata jsonb
)
RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
    SELECT CASE
        WHEN site_name = '' THEN 'name: must not be empty'
        -- NaN compares above every number in PostgreSQL, Infinity above every finite one: both fail the bound.
        WHEN NOT (import_limit_kw >= 0 AND import_limit_kw < 'Infinity'::real)
            THEN 'import_limit_kw: must be a finite number of kW, 0 or more (null: no limit)'
        WHEN NOT (export_limit_kw >= 0 AND export_limit_kw < 'Infinity'::real)
            THEN 'export_limit_kw: must be a finite number of kW, 0 or more (null: no limit)'
        WHEN site_meter = '' THEN 'site_meter: must not be empty (null: no site meter)'
        WHEN jsonb_typeof(metadata) NOT IN ('object', 'null')
            THEN format('metadata: must be a JSON object, not %s', jsonb_typeof(metadata))
    END
$$;
