-- After each statement that writes flux.mg_sites: refuse (rolling the statement back) a time zone that is not an
-- IANA zone name exactly as the zone database spells it, naming the first such site. pg_timezone_names lists the
-- same system zone database Python's zoneinfo reads, so every name accepted here loads in the services. The
-- list's aliases for other purposes (posix/..., right/..., posixrules, localtime, Factory) are not zones a site
-- can be in. One read of the list per statement, and none when every row written is in UTC.
CREATE OR REPLACE FUNCTION flux.refuse_unknown_site_timezones()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    site text;
    zone text;
BEGIN
    SELECT written.name, written.timezone INTO site, zone
    FROM written_sites AS written
    WHERE written.timezone <> 'UTC'
      AND (written.timezone ~ '^(posix|right)/' OR written.timezone IN ('posixrules', 'localtime', 'Factory')
           OR NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names AS zones WHERE zones.name = written.timezone))
    ORDER BY written.name
    LIMIT 1;
    IF site IS NOT NULL THEN
        RAISE EXCEPTION 'timezone: % is not an IANA time zone name (e.g. America/Toronto, Europe/Paris, UTC)',
                quote_literal(zone)
            USING ERRCODE = 'check_violation',
                  DETAIL = format('Site %s: its parameters do not obey the SiteParameters contract.', site),
                  COLUMN = 'timezone', TABLE = 'mg_sites', SCHEMA = 'flux';
    END IF;
    RETURN NULL;
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.refuse_unknown_site_timezones() FROM PUBLIC;
