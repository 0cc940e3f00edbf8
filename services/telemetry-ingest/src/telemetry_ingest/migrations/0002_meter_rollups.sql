-- 5-minute and 30-minute meter rollups, kept current by triggers, and the two RPCs served from them.
--
-- The origin used TimescaleDB continuous aggregates with timescaledb_toolkit's counter_agg and
-- interpolated_delta. Plain PostgreSQL has neither, so each bucket keeps a flux.counter_summary per
-- counter (first and last reading, resets, minimum) and flux.interpolated_delta extends a bucket's
-- increase to its exact boundaries from the neighbouring buckets, as the toolkit does.

-- What a bucket knows about one cumulative counter. A drop in the counter is a reset (meter replaced or
-- wrapped): the value seen before the drop is added to reset_total so the increase stays continuous.
CREATE TYPE flux.counter_summary AS (
    first_time timestamptz,
    first_value double precision,
    last_time timestamptz,
    last_value double precision,
    reset_total double precision,
    minimum double precision
);

-- The counter's increase over [bucket_start, bucket_start + bucket_width). The increase between the
-- bucket's first and last readings is extended to both boundaries by linear interpolation towards
-- the previous bucket's last reading and the following bucket's first one; without a neighbour the
-- bucket's own first or last reading stands for the boundary (as the toolkit does with a null
-- prev/next). Adjacent buckets therefore split the increase across their common boundary exactly.
CREATE FUNCTION flux.interpolated_delta(
    summary flux.counter_summary,
    bucket_start timestamptz,
    bucket_width interval,
    previous flux.counter_summary,
    following flux.counter_summary
)
RETURNS double precision
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
AS $$
DECLARE
    bucket_end timestamptz := bucket_start + bucket_width;
    delta double precision;
    neighbour_value double precision;
    boundary_value double precision;
BEGIN
    IF summary.first_time IS NULL THEN
        RETURN NULL;
    END IF;
    delta := summary.last_value - summary.first_value + summary.reset_total;
    IF previous.last_time IS NOT NULL AND previous.last_time < bucket_start
            AND summary.first_time > bucket_start THEN
        -- Seen from the previous reading: a drop across the boundary is a reset as well.
        neighbour_value := summary.first_value
            + CASE WHEN summary.first_value < previous.last_value THEN previous.last_value ELSE 0 END;
        boundary_value := previous.last_value + (neighbour_value - previous.last_value)
            * extract(epoch FROM bucket_start - previous.last_time)
            / extract(epoch FROM summary.first_time - previous.last_time);
        delta := delta + neighbour_value - boundary_value;
    END IF;
    IF following.first_time IS NOT NULL AND following.first_time >= bucket_end
            AND summary.last_time < bucket_end THEN
        neighbour_value := following.first_value
            + CASE WHEN following.first_value < summary.last_value THEN summary.last_value ELSE 0 END;
        boundary_value := summary.last_value + (neighbour_value - summary.last_value)
            * extract(epoch FROM bucket_end - summary.last_time)
            / extract(epoch FROM following.first_time - summary.last_time);
        delta := delta + boundary_value - summary.last_value;
    END IF;
    RETURN delta;
END
$$;

-- One row per (bucket width, device, bucket). Buckets are aligned as TimescaleDB's time_bucket aligns
-- them (on 2000-01-01 UTC), so every 5-minute bucket lies inside one 30-minute bucket.
CREATE TABLE flux.meter_reading_rollups (
    bucket_minutes smallint NOT NULL CHECK (bucket_minutes IN (5, 30)),
    device_id uuid NOT NULL,
    time_b timestamptz NOT NULL,
    reading_count integer NOT NULL,
    frequency_avg double precision,
    voltage_line_average_avg double precision,
    current_phase_a_avg double precision,
    current_phase_b_avg double precision,
    current_phase_c_avg double precision,
    current_phase_average_avg double precision,
    power_phase_a_active_avg double precision,
    power_phase_b_active_avg double precision,
    power_phase_c_active_avg double precision,
    power_total_active_avg double precision,
    power_total_reactive_avg double precision,
    power_total_apparent_avg double precision,
    power_factor_total_avg double precision,
    energy_imported_active flux.counter_summary,
    energy_exported_active flux.counter_summary,
    energy_imported_phase_a_active flux.counter_summary,
    energy_exported_phase_a_active flux.counter_summary,
    energy_imported_phase_b_active flux.counter_summary,
    energy_exported_phase_b_active flux.counter_summary,
    energy_imported_phase_c_active flux.counter_summary,
    energy_exported_phase_c_active flux.counter_summary,
    energy_imported_reactive flux.counter_summary,
    energy_exported_reactive flux.counter_summary,
    energy_imported_apparent flux.counter_summary,
    energy_exported_apparent flux.counter_summary,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket_minutes, device_id, time_b)
);

-- Recomputes, from the readings themselves, every 5- and 30-minute bucket of the given (device,
-- 30-minute period) pairs, and deletes buckets left without readings. Recomputing whole buckets rather
-- than adding the new rows keeps late, duplicate, updated and deleted readings correct.
CREATE FUNCTION flux.refresh_meter_rollups(touched_devices uuid[], touched_periods timestamptz[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER   -- writers of readings need no rights on the rollup table
SET search_path = pg_catalog, flux
AS $$
BEGIN
    -- Two transactions inserting into one bucket would each compute it without the other's
    -- uncommitted rows, and the later upsert would drop the earlier rows. A lock per (device, period),
    -- taken in a fixed order against deadlocks, makes the second wait; its next statement then runs on
    -- a fresh snapshot (READ COMMITTED) that includes the first one's rows.
    PERFORM pg_advisory_xact_lock(
        hashtextextended('flux.meter_reading_rollups:' || touched.device_id::text || ':'
                         || extract(epoch FROM touched.period_start)::bigint::text, 0))
    FROM (
        SELECT DISTINCT pair.device_id, pair.period_start
        FROM unnest(touched_devices, touched_periods) AS pair (device_id, period_start)
        ORDER BY 1, 2
    ) AS touched;

    WITH touched AS (
        SELECT DISTINCT pair.device_id, pair.period_start
        FROM unnest(touched_devices, touched_periods) AS pair (device_id, period_start)
    ),
    -- The touched readings in time order, each with the latest earlier non-null value of every counter
    -- as [epoch, value] (a running max over arrays sorts by epoch first): a value below it is a reset.
    ordered AS (
        SELECT
            readings.device_id,
            readings.time,
            extract(epoch FROM readings.time)::double precision AS epoch,
            readings.frequency,
            readings.voltage_line_average,
            readings.current_phase_a,
            readings.current_phase_b,
            readings.current_phase_c,
            readings.current_phase_average,
            readings.power_phase_a_active,
            readings.power_phase_b_active,
            readings.power_phase_c_active,
            readings.power_total_active,
            readings.power_total_reactive,
            readings.power_total_apparent,
            readings.power_factor_total,
            readings.energy_imported_active,
            readings.energy_exported_active,
            readings.energy_imported_phase_a_active,
            readings.energy_exported_phase_a_active,
            readings.energy_imported_phase_b_active,
            readings.energy_exported_phase_b_active,
            readings.energy_imported_phase_c_active,
            readings.energy_exported_phase_c_active,
            readings.energy_imported_reactive,
            readings.energy_exported_reactive,
            readings.energy_imported_apparent,
            readings.energy_exported_apparent,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_active])
                FILTER (WHERE readings.energy_imported_active IS NOT NULL) OVER earlier AS energy_imported_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_active])
                FILTER (WHERE readings.energy_exported_active IS NOT NULL) OVER earlier AS energy_exported_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_phase_a_active])
                FILTER (WHERE readings.energy_imported_phase_a_active IS NOT NULL) OVER earlier AS energy_imported_phase_a_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_phase_a_active])
                FILTER (WHERE readings.energy_exported_phase_a_active IS NOT NULL) OVER earlier AS energy_exported_phase_a_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_phase_b_active])
                FILTER (WHERE readings.energy_imported_phase_b_active IS NOT NULL) OVER earlier AS energy_imported_phase_b_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_phase_b_active])
                FILTER (WHERE readings.energy_exported_phase_b_active IS NOT NULL) OVER earlier AS energy_exported_phase_b_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_phase_c_active])
                FILTER (WHERE readings.energy_imported_phase_c_active IS NOT NULL) OVER earlier AS energy_imported_phase_c_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_phase_c_active])
                FILTER (WHERE readings.energy_exported_phase_c_active IS NOT NULL) OVER earlier AS energy_exported_phase_c_active_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_reactive])
                FILTER (WHERE readings.energy_imported_reactive IS NOT NULL) OVER earlier AS energy_imported_reactive_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_reactive])
                FILTER (WHERE readings.energy_exported_reactive IS NOT NULL) OVER earlier AS energy_exported_reactive_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_imported_apparent])
                FILTER (WHERE readings.energy_imported_apparent IS NOT NULL) OVER earlier AS energy_imported_apparent_previous,
            max(ARRAY[extract(epoch FROM readings.time)::double precision, readings.energy_exported_apparent])
                FILTER (WHERE readings.energy_exported_apparent IS NOT NULL) OVER earlier AS energy_exported_apparent_previous
        -- Lateral, so each period is one index range scan in one (runtime-pruned) partition.
        FROM touched
        CROSS JOIN LATERAL (
            SELECT * FROM flux.mg_meter_readings AS period_readings
            WHERE period_readings.device_id = touched.device_id
                AND period_readings.time >= touched.period_start
                AND period_readings.time < touched.period_start + interval '30 minutes'
        ) AS readings
        WINDOW earlier AS (
            PARTITION BY readings.device_id ORDER BY readings.time
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        )
    ),
    bucketed AS (
        SELECT widths.bucket_minutes, buckets.time_b, extract(epoch FROM buckets.time_b)::double precision AS bucket_epoch,
            ordered.*
        FROM ordered
        CROSS JOIN (VALUES (5::smallint), (30::smallint)) AS widths (bucket_minutes)
        CROSS JOIN LATERAL (
            SELECT date_bin(make_interval(mins => widths.bucket_minutes), ordered.time,
                            TIMESTAMPTZ '2000-01-01 00:00:00+00') AS time_b
        ) AS buckets
    ),
    -- Built from native aggregates rather than a PL/pgSQL aggregate, which cost ~1 µs per row and
    -- counter and made the trigger dominate COPY time. A reset counts in a bucket only when the
    -- reading before the drop lies in the same bucket; drops across a boundary are interpolation's.
    computed AS (
        SELECT
            bucketed.bucket_minutes,
            bucketed.device_id,
            bucketed.time_b,
            count(*) AS reading_count,
            avg(bucketed.frequency) AS frequency_avg,
            avg(bucketed.voltage_line_average) AS voltage_line_average_avg,
            avg(bucketed.current_phase_a) AS current_phase_a_avg,
            avg(bucketed.current_phase_b) AS current_phase_b_avg,
            avg(bucketed.current_phase_c) AS current_phase_c_avg,
            avg(bucketed.current_phase_average) AS current_phase_average_avg,
            avg(bucketed.power_phase_a_active) AS power_phase_a_active_avg,
            avg(bucketed.power_phase_b_active) AS power_phase_b_active_avg,
            avg(bucketed.power_phase_c_active) AS power_phase_c_active_avg,
            avg(bucketed.power_total_active) AS power_total_active_avg,
            avg(bucketed.power_total_reactive) AS power_total_reactive_avg,
            avg(bucketed.power_total_apparent) AS power_total_apparent_avg,
            avg(bucketed.power_factor_total) AS power_factor_total_avg,
            CASE WHEN count(bucketed.energy_imported_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_imported_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_imported_active]) FILTER (WHERE bucketed.energy_imported_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_imported_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_imported_active]) FILTER (WHERE bucketed.energy_imported_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_imported_active_previous[2]) FILTER (WHERE bucketed.energy_imported_active < bucketed.energy_imported_active_previous[2]
                    AND bucketed.energy_imported_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_imported_active)
            )::flux.counter_summary END AS energy_imported_active,
            CASE WHEN count(bucketed.energy_exported_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_exported_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_exported_active]) FILTER (WHERE bucketed.energy_exported_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_exported_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_exported_active]) FILTER (WHERE bucketed.energy_exported_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_exported_active_previous[2]) FILTER (WHERE bucketed.energy_exported_active < bucketed.energy_exported_active_previous[2]
                    AND bucketed.energy_exported_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_exported_active)
            )::flux.counter_summary END AS energy_exported_active,
            CASE WHEN count(bucketed.energy_imported_phase_a_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_imported_phase_a_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_imported_phase_a_active]) FILTER (WHERE bucketed.energy_imported_phase_a_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_imported_phase_a_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_imported_phase_a_active]) FILTER (WHERE bucketed.energy_imported_phase_a_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_imported_phase_a_active_previous[2]) FILTER (WHERE bucketed.energy_imported_phase_a_active < bucketed.energy_imported_phase_a_active_previous[2]
                    AND bucketed.energy_imported_phase_a_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_imported_phase_a_active)
            )::flux.counter_summary END AS energy_imported_phase_a_active,
            CASE WHEN count(bucketed.energy_exported_phase_a_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_exported_phase_a_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_exported_phase_a_active]) FILTER (WHERE bucketed.energy_exported_phase_a_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_exported_phase_a_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_exported_phase_a_active]) FILTER (WHERE bucketed.energy_exported_phase_a_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_exported_phase_a_active_previous[2]) FILTER (WHERE bucketed.energy_exported_phase_a_active < bucketed.energy_exported_phase_a_active_previous[2]
                    AND bucketed.energy_exported_phase_a_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_exported_phase_a_active)
            )::flux.counter_summary END AS energy_exported_phase_a_active,
            CASE WHEN count(bucketed.energy_imported_phase_b_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_imported_phase_b_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_imported_phase_b_active]) FILTER (WHERE bucketed.energy_imported_phase_b_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_imported_phase_b_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_imported_phase_b_active]) FILTER (WHERE bucketed.energy_imported_phase_b_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_imported_phase_b_active_previous[2]) FILTER (WHERE bucketed.energy_imported_phase_b_active < bucketed.energy_imported_phase_b_active_previous[2]
                    AND bucketed.energy_imported_phase_b_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_imported_phase_b_active)
            )::flux.counter_summary END AS energy_imported_phase_b_active,
            CASE WHEN count(bucketed.energy_exported_phase_b_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_exported_phase_b_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_exported_phase_b_active]) FILTER (WHERE bucketed.energy_exported_phase_b_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_exported_phase_b_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_exported_phase_b_active]) FILTER (WHERE bucketed.energy_exported_phase_b_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_exported_phase_b_active_previous[2]) FILTER (WHERE bucketed.energy_exported_phase_b_active < bucketed.energy_exported_phase_b_active_previous[2]
                    AND bucketed.energy_exported_phase_b_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_exported_phase_b_active)
            )::flux.counter_summary END AS energy_exported_phase_b_active,
            CASE WHEN count(bucketed.energy_imported_phase_c_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_imported_phase_c_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_imported_phase_c_active]) FILTER (WHERE bucketed.energy_imported_phase_c_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_imported_phase_c_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_imported_phase_c_active]) FILTER (WHERE bucketed.energy_imported_phase_c_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_imported_phase_c_active_previous[2]) FILTER (WHERE bucketed.energy_imported_phase_c_active < bucketed.energy_imported_phase_c_active_previous[2]
                    AND bucketed.energy_imported_phase_c_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_imported_phase_c_active)
            )::flux.counter_summary END AS energy_imported_phase_c_active,
            CASE WHEN count(bucketed.energy_exported_phase_c_active) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_exported_phase_c_active IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_exported_phase_c_active]) FILTER (WHERE bucketed.energy_exported_phase_c_active IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_exported_phase_c_active IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_exported_phase_c_active]) FILTER (WHERE bucketed.energy_exported_phase_c_active IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_exported_phase_c_active_previous[2]) FILTER (WHERE bucketed.energy_exported_phase_c_active < bucketed.energy_exported_phase_c_active_previous[2]
                    AND bucketed.energy_exported_phase_c_active_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_exported_phase_c_active)
            )::flux.counter_summary END AS energy_exported_phase_c_active,
            CASE WHEN count(bucketed.energy_imported_reactive) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_imported_reactive IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_imported_reactive]) FILTER (WHERE bucketed.energy_imported_reactive IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_imported_reactive IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_imported_reactive]) FILTER (WHERE bucketed.energy_imported_reactive IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_imported_reactive_previous[2]) FILTER (WHERE bucketed.energy_imported_reactive < bucketed.energy_imported_reactive_previous[2]
                    AND bucketed.energy_imported_reactive_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_imported_reactive)
            )::flux.counter_summary END AS energy_imported_reactive,
            CASE WHEN count(bucketed.energy_exported_reactive) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_exported_reactive IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_exported_reactive]) FILTER (WHERE bucketed.energy_exported_reactive IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_exported_reactive IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_exported_reactive]) FILTER (WHERE bucketed.energy_exported_reactive IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_exported_reactive_previous[2]) FILTER (WHERE bucketed.energy_exported_reactive < bucketed.energy_exported_reactive_previous[2]
                    AND bucketed.energy_exported_reactive_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_exported_reactive)
            )::flux.counter_summary END AS energy_exported_reactive,
            CASE WHEN count(bucketed.energy_imported_apparent) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_imported_apparent IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_imported_apparent]) FILTER (WHERE bucketed.energy_imported_apparent IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_imported_apparent IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_imported_apparent]) FILTER (WHERE bucketed.energy_imported_apparent IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_imported_apparent_previous[2]) FILTER (WHERE bucketed.energy_imported_apparent < bucketed.energy_imported_apparent_previous[2]
                    AND bucketed.energy_imported_apparent_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_imported_apparent)
            )::flux.counter_summary END AS energy_imported_apparent,
            CASE WHEN count(bucketed.energy_exported_apparent) > 0 THEN ROW(
                min(bucketed.time) FILTER (WHERE bucketed.energy_exported_apparent IS NOT NULL),
                (min(ARRAY[bucketed.epoch, bucketed.energy_exported_apparent]) FILTER (WHERE bucketed.energy_exported_apparent IS NOT NULL))[2],
                max(bucketed.time) FILTER (WHERE bucketed.energy_exported_apparent IS NOT NULL),
                (max(ARRAY[bucketed.epoch, bucketed.energy_exported_apparent]) FILTER (WHERE bucketed.energy_exported_apparent IS NOT NULL))[2],
                coalesce(sum(bucketed.energy_exported_apparent_previous[2]) FILTER (WHERE bucketed.energy_exported_apparent < bucketed.energy_exported_apparent_previous[2]
                    AND bucketed.energy_exported_apparent_previous[1] >= bucketed.bucket_epoch), 0),
                min(bucketed.energy_exported_apparent)
            )::flux.counter_summary END AS energy_exported_apparent
        FROM bucketed
        GROUP BY bucketed.bucket_minutes, bucketed.device_id, bucketed.time_b
    ),
    emptied AS (
        DELETE FROM flux.meter_reading_rollups AS rollups
        USING touched
        WHERE rollups.device_id = touched.device_id
            AND rollups.time_b >= touched.period_start
            AND rollups.time_b < touched.period_start + interval '30 minutes'
            AND NOT EXISTS (
                SELECT FROM computed
                WHERE computed.bucket_minutes = rollups.bucket_minutes
                    AND computed.device_id = rollups.device_id
                    AND computed.time_b = rollups.time_b
            )
    )
    INSERT INTO flux.meter_reading_rollups (bucket_minutes, device_id, time_b, reading_count, frequency_avg, voltage_line_average_avg, current_phase_a_avg, current_phase_b_avg, current_phase_c_avg, current_phase_average_avg, power_phase_a_active_avg, power_phase_b_active_avg, power_phase_c_active_avg, power_total_active_avg, power_total_reactive_avg, power_total_apparent_avg, power_factor_total_avg, energy_imported_active, energy_exported_active, energy_imported_phase_a_active, energy_exported_phase_a_active, energy_imported_phase_b_active, energy_exported_phase_b_active, energy_imported_phase_c_active, energy_exported_phase_c_active, energy_imported_reactive, energy_exported_reactive, energy_imported_apparent, energy_exported_apparent)
    SELECT bucket_minutes, device_id, time_b, reading_count, frequency_avg, voltage_line_average_avg, current_phase_a_avg, current_phase_b_avg, current_phase_c_avg, current_phase_average_avg, power_phase_a_active_avg, power_phase_b_active_avg, power_phase_c_active_avg, power_total_active_avg, power_total_reactive_avg, power_total_apparent_avg, power_factor_total_avg, energy_imported_active, energy_exported_active, energy_imported_phase_a_active, energy_exported_phase_a_active, energy_imported_phase_b_active, energy_exported_phase_b_active, energy_imported_phase_c_active, energy_exported_phase_c_active, energy_imported_reactive, energy_exported_reactive, energy_imported_apparent, energy_exported_apparent
    FROM computed
    ON CONFLICT (bucket_minutes, device_id, time_b) DO UPDATE SET
        reading_count = EXCLUDED.reading_count,
        frequency_avg = EXCLUDED.frequency_avg,
        voltage_line_average_avg = EXCLUDED.voltage_line_average_avg,
        current_phase_a_avg = EXCLUDED.current_phase_a_avg,
        current_phase_b_avg = EXCLUDED.current_phase_b_avg,
        current_phase_c_avg = EXCLUDED.current_phase_c_avg,
        current_phase_average_avg = EXCLUDED.current_phase_average_avg,
        power_phase_a_active_avg = EXCLUDED.power_phase_a_active_avg,
        power_phase_b_active_avg = EXCLUDED.power_phase_b_active_avg,
        power_phase_c_active_avg = EXCLUDED.power_phase_c_active_avg,
        power_total_active_avg = EXCLUDED.power_total_active_avg,
        power_total_reactive_avg = EXCLUDED.power_total_reactive_avg,
        power_total_apparent_avg = EXCLUDED.power_total_apparent_avg,
        power_factor_total_avg = EXCLUDED.power_factor_total_avg,
        energy_imported_active = EXCLUDED.energy_imported_active,
        energy_exported_active = EXCLUDED.energy_exported_active,
        energy_imported_phase_a_active = EXCLUDED.energy_imported_phase_a_active,
        energy_exported_phase_a_active = EXCLUDED.energy_exported_phase_a_active,
        energy_imported_phase_b_active = EXCLUDED.energy_imported_phase_b_active,
        energy_exported_phase_b_active = EXCLUDED.energy_exported_phase_b_active,
        energy_imported_phase_c_active = EXCLUDED.energy_imported_phase_c_active,
        energy_exported_phase_c_active = EXCLUDED.energy_exported_phase_c_active,
        energy_imported_reactive = EXCLUDED.energy_imported_reactive,
        energy_exported_reactive = EXCLUDED.energy_exported_reactive,
        energy_imported_apparent = EXCLUDED.energy_imported_apparent,
        energy_exported_apparent = EXCLUDED.energy_exported_apparent,
        refreshed_at = now();
END
$$;

-- Statement-level, so a COPY or a bulk INSERT refreshes each touched bucket once, not once per row.
CREATE FUNCTION flux.meter_readings_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, flux
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM flux.refresh_meter_rollups(array_agg(touched.device_id), array_agg(touched.period_start))
        FROM (
            SELECT DISTINCT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM new_readings
        ) AS touched (device_id, period_start);
    ELSIF TG_OP = 'UPDATE' THEN
        -- An update may move a reading to another device or bucket: both old and new buckets change.
        PERFORM flux.refresh_meter_rollups(array_agg(touched.device_id), array_agg(touched.period_start))
        FROM (
            SELECT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM new_readings
            UNION
            SELECT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM old_readings
        ) AS touched (device_id, period_start);
    ELSE
        PERFORM flux.refresh_meter_rollups(array_agg(touched.device_id), array_agg(touched.period_start))
        FROM (
            SELECT DISTINCT device_id, date_bin(interval '30 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
            FROM old_readings
        ) AS touched (device_id, period_start);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER meter_rollups_after_insert
    AFTER INSERT ON flux.mg_meter_readings
    REFERENCING NEW TABLE AS new_readings
    FOR EACH STATEMENT EXECUTE FUNCTION flux.meter_readings_changed();
CREATE TRIGGER meter_rollups_after_update
    AFTER UPDATE ON flux.mg_meter_readings
    REFERENCING OLD TABLE AS old_readings NEW TABLE AS new_readings
    FOR EACH STATEMENT EXECUTE FUNCTION flux.meter_readings_changed();
CREATE TRIGGER meter_rollups_after_delete
    AFTER DELETE ON flux.mg_meter_readings
    REFERENCING OLD TABLE AS old_readings
    FOR EACH STATEMENT EXECUTE FUNCTION flux.meter_readings_changed();

-- The RPC rows of one bucket width. Deltas interpolate towards the device's neighbouring stored
-- buckets even when those lie outside [start_time, end_time]. (The origin's LAG/LEAD saw only the
-- requested window, so the first and last buckets' deltas changed with the window asked for; here a
-- bucket's delta is the same whichever window includes it.)
CREATE FUNCTION flux.meter_reading_buckets(
    width_minutes integer, start_time timestamptz, end_time timestamptz, device_ids uuid[]
)
RETURNS TABLE (
    time_b timestamptz,
    device_id uuid,
    frequency_avg double precision,
    voltage_line_average_avg double precision,
    current_phase_a_avg double precision,
    current_phase_b_avg double precision,
    current_phase_c_avg double precision,
    current_phase_average_avg double precision,
    power_phase_a_active_avg double precision,
    power_phase_b_active_avg double precision,
    power_phase_c_active_avg double precision,
    power_total_active_avg double precision,
    power_total_reactive_avg double precision,
    power_total_apparent_avg double precision,
    power_factor_total_avg double precision,
    energy_imported_active_min real,
    energy_exported_active_min real,
    energy_imported_phase_a_active_min real,
    energy_exported_phase_a_active_min real,
    energy_imported_phase_b_active_min real,
    energy_exported_phase_b_active_min real,
    energy_imported_phase_c_active_min real,
    energy_exported_phase_c_active_min real,
    energy_imported_active_delta double precision,
    energy_exported_active_delta double precision,
    energy_imported_phase_a_active_delta double precision,
    energy_exported_phase_a_active_delta double precision,
    energy_imported_phase_b_active_delta double precision,
    energy_exported_phase_b_active_delta double precision,
    energy_imported_phase_c_active_delta double precision,
    energy_exported_phase_c_active_delta double precision,
    energy_imported_reactive_delta double precision,
    energy_exported_reactive_delta double precision,
    energy_imported_apparent_delta double precision,
    energy_exported_apparent_delta double precision
)
LANGUAGE sql
STABLE
AS $$
    WITH chosen AS (
        SELECT rollups.*
        FROM flux.meter_reading_rollups AS rollups
        WHERE rollups.bucket_minutes = width_minutes
            AND rollups.time_b BETWEEN start_time AND end_time
            AND (device_ids IS NULL OR rollups.device_id = ANY (device_ids))
    ),
    neighbours AS (
        SELECT before.*
        FROM (SELECT DISTINCT chosen.device_id FROM chosen) AS devices
        CROSS JOIN LATERAL (
            SELECT rollups.* FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = width_minutes AND rollups.device_id = devices.device_id
                AND rollups.time_b < start_time
            ORDER BY rollups.time_b DESC LIMIT 1
        ) AS before
        UNION ALL
        SELECT after.*
        FROM (SELECT DISTINCT chosen.device_id FROM chosen) AS devices
        CROSS JOIN LATERAL (
            SELECT rollups.* FROM flux.meter_reading_rollups AS rollups
            WHERE rollups.bucket_minutes = width_minutes AND rollups.device_id = devices.device_id
                AND rollups.time_b > end_time
            ORDER BY rollups.time_b LIMIT 1
        ) AS after
    ),
    windowed AS (
        SELECT
            rollups.*,
            lag(rollups.energy_imported_active) OVER ordered AS previous_energy_imported_active,
            lead(rollups.energy_imported_active) OVER ordered AS following_energy_imported_active,
            lag(rollups.energy_exported_active) OVER ordered AS previous_energy_exported_active,
            lead(rollups.energy_exported_active) OVER ordered AS following_energy_exported_active,
            lag(rollups.energy_imported_phase_a_active) OVER ordered AS previous_energy_imported_phase_a_active,
            lead(rollups.energy_imported_phase_a_active) OVER ordered AS following_energy_imported_phase_a_active,
            lag(rollups.energy_exported_phase_a_active) OVER ordered AS previous_energy_exported_phase_a_active,
            lead(rollups.energy_exported_phase_a_active) OVER ordered AS following_energy_exported_phase_a_active,
            lag(rollups.energy_imported_phase_b_active) OVER ordered AS previous_energy_imported_phase_b_active,
            lead(rollups.energy_imported_phase_b_active) OVER ordered AS following_energy_imported_phase_b_active,
            lag(rollups.energy_exported_phase_b_active) OVER ordered AS previous_energy_exported_phase_b_active,
            lead(rollups.energy_exported_phase_b_active) OVER ordered AS following_energy_exported_phase_b_active,
            lag(rollups.energy_imported_phase_c_active) OVER ordered AS previous_energy_imported_phase_c_active,
            lead(rollups.energy_imported_phase_c_active) OVER ordered AS following_energy_imported_phase_c_active,
            lag(rollups.energy_exported_phase_c_active) OVER ordered AS previous_energy_exported_phase_c_active,
            lead(rollups.energy_exported_phase_c_active) OVER ordered AS following_energy_exported_phase_c_active,
            lag(rollups.energy_imported_reactive) OVER ordered AS previous_energy_imported_reactive,
            lead(rollups.energy_imported_reactive) OVER ordered AS following_energy_imported_reactive,
            lag(rollups.energy_exported_reactive) OVER ordered AS previous_energy_exported_reactive,
            lead(rollups.energy_exported_reactive) OVER ordered AS following_energy_exported_reactive,
            lag(rollups.energy_imported_apparent) OVER ordered AS previous_energy_imported_apparent,
            lead(rollups.energy_imported_apparent) OVER ordered AS following_energy_imported_apparent,
            lag(rollups.energy_exported_apparent) OVER ordered AS previous_energy_exported_apparent,
            lead(rollups.energy_exported_apparent) OVER ordered AS following_energy_exported_apparent
        FROM (SELECT * FROM chosen UNION ALL SELECT * FROM neighbours) AS rollups
        WINDOW ordered AS (PARTITION BY rollups.device_id ORDER BY rollups.time_b)
    )
    SELECT
        windowed.time_b,
        windowed.device_id,
        windowed.frequency_avg,
        windowed.voltage_line_average_avg,
        windowed.current_phase_a_avg,
        windowed.current_phase_b_avg,
        windowed.current_phase_c_avg,
        windowed.current_phase_average_avg,
        windowed.power_phase_a_active_avg,
        windowed.power_phase_b_active_avg,
        windowed.power_phase_c_active_avg,
        windowed.power_total_active_avg,
        windowed.power_total_reactive_avg,
        windowed.power_total_apparent_avg,
        windowed.power_factor_total_avg,
        (windowed.energy_imported_active).minimum::real,
        (windowed.energy_exported_active).minimum::real,
        (windowed.energy_imported_phase_a_active).minimum::real,
        (windowed.energy_exported_phase_a_active).minimum::real,
        (windowed.energy_imported_phase_b_active).minimum::real,
        (windowed.energy_exported_phase_b_active).minimum::real,
        (windowed.energy_imported_phase_c_active).minimum::real,
        (windowed.energy_exported_phase_c_active).minimum::real,
        flux.interpolated_delta(windowed.energy_imported_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_active, windowed.following_energy_imported_active),
        flux.interpolated_delta(windowed.energy_exported_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_active, windowed.following_energy_exported_active),
        flux.interpolated_delta(windowed.energy_imported_phase_a_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_phase_a_active, windowed.following_energy_imported_phase_a_active),
        flux.interpolated_delta(windowed.energy_exported_phase_a_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_phase_a_active, windowed.following_energy_exported_phase_a_active),
        flux.interpolated_delta(windowed.energy_imported_phase_b_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_phase_b_active, windowed.following_energy_imported_phase_b_active),
        flux.interpolated_delta(windowed.energy_exported_phase_b_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_phase_b_active, windowed.following_energy_exported_phase_b_active),
        flux.interpolated_delta(windowed.energy_imported_phase_c_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_phase_c_active, windowed.following_energy_imported_phase_c_active),
        flux.interpolated_delta(windowed.energy_exported_phase_c_active, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_phase_c_active, windowed.following_energy_exported_phase_c_active),
        flux.interpolated_delta(windowed.energy_imported_reactive, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_reactive, windowed.following_energy_imported_reactive),
        flux.interpolated_delta(windowed.energy_exported_reactive, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_reactive, windowed.following_energy_exported_reactive),
        flux.interpolated_delta(windowed.energy_imported_apparent, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_imported_apparent, windowed.following_energy_imported_apparent),
        flux.interpolated_delta(windowed.energy_exported_apparent, windowed.time_b, make_interval(mins => width_minutes), windowed.previous_energy_exported_apparent, windowed.following_energy_exported_apparent)
    FROM windowed
    WHERE windowed.time_b BETWEEN start_time AND end_time
    ORDER BY windowed.time_b, windowed.device_id
$$;

-- 5-minute meter aggregates (seed 001 RPC, origin 0008): buckets with start_time <= time_b <= end_time, all devices when
-- device_ids is null, last 24 hours by default.
CREATE OR REPLACE FUNCTION flux.get_meter_readings_5m(
    start_time timestamptz DEFAULT now() - interval '24 hours',
    end_time timestamptz DEFAULT now(),
    device_ids uuid[] DEFAULT NULL
)
RETURNS TABLE (
    time_b timestamptz,
    device_id uuid,
    frequency_avg double precision,
    voltage_line_average_avg double precision,
    current_phase_a_avg double precision,
    current_phase_b_avg double precision,
    current_phase_c_avg double precision,
    current_phase_average_avg double precision,
    power_phase_a_active_avg double precision,
    power_phase_b_active_avg double precision,
    power_phase_c_active_avg double precision,
    power_total_active_avg double precision,
    power_total_reactive_avg double precision,
    power_total_apparent_avg double precision,
    power_factor_total_avg double precision,
    energy_imported_active_min real,
    energy_exported_active_min real,
    energy_imported_phase_a_active_min real,
    energy_exported_phase_a_active_min real,
    energy_imported_phase_b_active_min real,
    energy_exported_phase_b_active_min real,
    energy_imported_phase_c_active_min real,
    energy_exported_phase_c_active_min real,
    energy_imported_active_delta double precision,
    energy_exported_active_delta double precision,
    energy_imported_phase_a_active_delta double precision,
    energy_exported_phase_a_active_delta double precision,
    energy_imported_phase_b_active_delta double precision,
    energy_exported_phase_b_active_delta double precision,
    energy_imported_phase_c_active_delta double precision,
    energy_exported_phase_c_active_delta double precision,
    energy_imported_reactive_delta double precision,
    energy_exported_reactive_delta double precision,
    energy_imported_apparent_delta double precision,
    energy_exported_apparent_delta double precision
)
LANGUAGE sql
STABLE
AS $$
    SELECT * FROM flux.meter_reading_buckets(5, start_time, end_time, device_ids)
$$;

-- 30-minute settlement-period meter aggregates (seed 001 RPC, origin 0008): buckets with start_time <= time_b <= end_time, all devices when
-- device_ids is null, last 24 hours by default.
CREATE OR REPLACE FUNCTION flux.get_meter_readings_30m(
    start_time timestamptz DEFAULT now() - interval '24 hours',
    end_time timestamptz DEFAULT now(),
    device_ids uuid[] DEFAULT NULL
)
RETURNS TABLE (
    time_b timestamptz,
    device_id uuid,
    frequency_avg double precision,
    voltage_line_average_avg double precision,
    current_phase_a_avg double precision,
    current_phase_b_avg double precision,
    current_phase_c_avg double precision,
    current_phase_average_avg double precision,
    power_phase_a_active_avg double precision,
    power_phase_b_active_avg double precision,
    power_phase_c_active_avg double precision,
    power_total_active_avg double precision,
    power_total_reactive_avg double precision,
    power_total_apparent_avg double precision,
    power_factor_total_avg double precision,
    energy_imported_active_min real,
    energy_exported_active_min real,
    energy_imported_phase_a_active_min real,
    energy_exported_phase_a_active_min real,
    energy_imported_phase_b_active_min real,
    energy_exported_phase_b_active_min real,
    energy_imported_phase_c_active_min real,
    energy_exported_phase_c_active_min real,
    energy_imported_active_delta double precision,
    energy_exported_active_delta double precision,
    energy_imported_phase_a_active_delta double precision,
    energy_exported_phase_a_active_delta double precision,
    energy_imported_phase_b_active_delta double precision,
    energy_exported_phase_b_active_delta double precision,
    energy_imported_phase_c_active_delta double precision,
    energy_exported_phase_c_active_delta double precision,
    energy_imported_reactive_delta double precision,
    energy_exported_reactive_delta double precision,
    energy_imported_apparent_delta double precision,
    energy_exported_apparent_delta double precision
)
LANGUAGE sql
STABLE
AS $$
    SELECT * FROM flux.meter_reading_buckets(30, start_time, end_time, device_ids)
$$;
