-- Before each write of a flux.mg_sites row: refuse a bad plain field naming it (flux.site_problem), and keep
-- updated_at current whoever writes.
CREATE OR REPLACE FUNCTION flux.refuse_invalid_site()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    problem text := flux.site_problem(NEW.name, NEW.import_limit_kw, NEW.export_limit_kw, NEW.site_meter, NEW.metadata);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem
            USING ERRCODE = 'check_violation',
                  DETAIL = format('Site %s: its parameters do not obey the SiteParameters contract.', NEW.name),
                  COLUMN = split_part(problem, ':', 1), TABLE = 'mg_sites', SCHEMA = 'flux';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.refuse_invalid_site() FROM PUBLIC;
