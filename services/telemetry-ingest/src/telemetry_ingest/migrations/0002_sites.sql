-- flux.mg_sites: each site's own parameters (docs/design.md §4), served by the Flux API like the other flux tables.
--
-- A site is a value of flux.mg_device_registry.site; a row here is optional. There is no foreign key either way:
-- a device may name a site that has no row here (it gets the defaults below: time zone UTC, no import or export
-- limit, no site meter), and a site may be described before its first device is registered.
--
-- What a row may hold is checked by triggers (repeatable/function.flux.site_problem.sql and the files it names),
-- which name the field at fault, so the REST API answers 400 with, e.g., "timezone: 'Mars/Base' is not an IANA
-- time zone name" rather than a constraint's name.
CREATE TABLE flux.mg_sites (
    name text PRIMARY KEY,
    timezone text NOT NULL DEFAULT 'UTC',   -- IANA name, e.g. America/Toronto; tariffs and day-ahead days are local
    import_limit_kw real,                   -- most the site may draw from the grid, kW; null: no limit
    export_limit_kw real,                   -- most the site may feed into the grid, kW (a magnitude); null: no limit
    site_meter text,                        -- name of the registry's meter at the grid connection
    metadata jsonb,                         -- anything else about the site, a JSON object
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE flux.mg_sites IS
    'Per-site parameters; a site of the device registry without a row here has time zone UTC and no limits.';

-- As for the registry: anon reads every column but metadata (free-form, may describe the installation),
-- authenticated reads everything, service_role (operators, the CLI) writes. Stated explicitly rather than
-- left to the schema's default privileges, which apply only to tables the migrating role creates.
REVOKE ALL ON flux.mg_sites FROM anon, authenticated;
GRANT SELECT (name, timezone, import_limit_kw, export_limit_kw, site_meter, created_at, updated_at)
    ON flux.mg_sites TO anon;
GRANT SELECT ON flux.mg_sites TO authenticated;
GRANT ALL ON flux.mg_sites TO service_role;

ALTER TABLE flux.mg_sites ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON flux.mg_sites FOR SELECT TO anon, authenticated USING (true);
CREATE POLICY service_all ON flux.mg_sites FOR ALL TO service_role USING (true) WITH CHECK (true);
