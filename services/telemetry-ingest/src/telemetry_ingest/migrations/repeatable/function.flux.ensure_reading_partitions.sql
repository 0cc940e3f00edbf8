-- Creates the monthly partitions (UTC months) of both readings tables for from_month and the
-- months_ahead months after it; returns how many it created. Rows of such a month already parked in
-- the default partition are moved into the new partition, since PostgreSQL refuses to attach a
-- partition whose range the default partition still holds rows for.
CREATE OR REPLACE FUNCTION flux.ensure_reading_partitions(from_month date, months_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER   -- the tables' owner creates partitions; only service_role may call it
SET search_path = pg_catalog
AS $$
DECLARE
    parent text;
    step integer;
    month_start timestamptz;
    month_end timestamptz;
    partition_name text;
    created integer := 0;
BEGIN
    -- Two callers at once (replicas starting together) would both try to create the same tables.
    PERFORM pg_advisory_xact_lock(hashtextextended('flux.ensure_reading_partitions', 0));
    FOREACH parent IN ARRAY ARRAY['mg_bess_readings', 'mg_meter_readings'] LOOP
        FOR step IN 0..months_ahead LOOP
            month_start := (date_trunc('month', from_month::timestamp) + make_interval(months => step))
                AT TIME ZONE 'UTC';
            month_end := (date_trunc('month', from_month::timestamp) + make_interval(months => step + 1))
                AT TIME ZONE 'UTC';
            partition_name := parent || to_char(month_start AT TIME ZONE 'UTC', '"_y"YYYY"m"MM');
            CONTINUE WHEN to_regclass(format('flux.%I', partition_name)) IS NOT NULL;
            EXECUTE format('CREATE TABLE flux.%I (LIKE flux.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           partition_name, parent);
            EXECUTE format('WITH moved AS (DELETE FROM flux.%I WHERE time >= $1 AND time < $2 RETURNING *) '
                           'INSERT INTO flux.%I SELECT * FROM moved', parent || '_default', partition_name)
                USING month_start, month_end;
            EXECUTE format('ALTER TABLE flux.%I ATTACH PARTITION flux.%I FOR VALUES FROM (%L) TO (%L)',
                           parent, partition_name, month_start, month_end);
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

-- Functions are executable by PUBLIC by default; maintenance and trigger functions are not.
REVOKE EXECUTE ON FUNCTION flux.ensure_reading_partitions(date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.ensure_reading_partitions(date, integer) TO service_role;

-- A fresh database gets its partitions from three months back to a year ahead here, where the function is
-- defined; the service keeps them ahead from then on. Creates nothing when they exist.
SELECT flux.ensure_reading_partitions((now() - interval '3 months')::date, 15);
