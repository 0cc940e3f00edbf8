-- flux.mg_sites rows obey gridloop_common.contracts.SiteParameters, for every writer: the plain fields row by row
-- before the write (flux.refuse_invalid_site), the time zones once per statement after it
-- (flux.refuse_unknown_site_timezones; a transition table may serve one event only, hence two triggers).
DROP TRIGGER IF EXISTS site_contract ON flux.mg_sites;
CREATE TRIGGER site_contract
    BEFORE INSERT OR UPDATE ON flux.mg_sites
    FOR EACH ROW EXECUTE FUNCTION flux.refuse_invalid_site();

DROP TRIGGER IF EXISTS site_timezones_inserted ON flux.mg_sites;
CREATE TRIGGER site_timezones_inserted
    AFTER INSERT ON flux.mg_sites
    REFERENCING NEW TABLE AS written_sites
    FOR EACH STATEMENT EXECUTE FUNCTION flux.refuse_unknown_site_timezones();

DROP TRIGGER IF EXISTS site_timezones_updated ON flux.mg_sites;
CREATE TRIGGER site_timezones_updated
    AFTER UPDATE ON flux.mg_sites
    REFERENCING NEW TABLE AS written_sites
    FOR EACH STATEMENT EXECUTE FUNCTION flux.refuse_unknown_site_timezones();
