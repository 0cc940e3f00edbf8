-- After each statement that writes flux.mg_sites: refuse (rolling the statement back) a time zone that is not an
-- IANA zone name exactly as the zone database spells it, naming a site that has it.
--
-- pg_timezone_names lists the same system zone database Python's zoneinfo reads, so every name accepted here loads
-- in the services; its other entries (posix/..., right/..., posixrules, localtime, Factory) are not places. Reading
-- that list takes tens of milliseconds, so it is read at most once per statement, and not at all when every zone
-- written is UTC or one PostgreSQL does not recognise in any spelling (refused at once, without the list).
CREATE OR REPLACE FUNCTION flux.refuse_unknown_site_timezones()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    site text;
    zone text;
    bad_site text;
    bad_zone text;
    unchecked boolean := false;
BEGIN
    FOR site, zone IN SELECT written.name, written.timezone FROM written_sites AS written
                      WHERE written.timezone <> 'UTC' ORDER BY written.name LOOP
        IF zone ~ '^(posix|right)/' OR zone IN ('posixrules', 'localtime', 'Factory') THEN
            bad_site := site;
            bad_zone := zone;
            EXIT;
        END IF;
        BEGIN
            PERFORM pg_catalog.timezone(zone, pg_catalog.now());
            unchecked := true;
        EXCEPTION WHEN data_exception THEN
            bad_site := site;
            bad_zone := zone;
            EXIT;
        END;
    END LOOP;
    IF bad_site IS NULL AND unchecked THEN
        -- PostgreSQL also recognises abbreviations, POSIX rules and any capitalisation; the list does not.
        SELECT written.name, written.timezone INTO bad_site, bad_zone
        FROM written_sites AS written
        WHERE written.timezone <> 'UTC'
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names AS zones WHERE zones.name = written.timezone)
        ORDER BY written.name
        LIMIT 1;
    END IF;
    IF bad_site IS NOT NULL THEN
        RAISE EXCEPTION 'timezone: % is not an IANA time zone name (e.g. America/Toronto, Europe/Paris, UTC)',
                quote_literal(bad_zone)
            USING ERRCODE = 'check_violation',
                  DETAIL = format('Site %s: its parameters do not obey the SiteParameters contract.', bad_site),
                  COLUMN = 'timezone', TABLE = 'mg_sites', SCHEMA = 'flux';
    END IF;
    RETURN NULL;
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.refuse_unknown_site_timezones() FROM PUBLIC;
