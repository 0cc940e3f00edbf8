-- The counter's increase over [bucket_start, bucket_start + bucket_width). The increase between the
-- bucket's first and last readings is extended to both boundaries by linear interpolation towards
-- the previous bucket's last reading and the following bucket's first one; without a neighbour the
-- bucket's own first or last reading stands for the boundary (as the toolkit does with a null
-- prev/next). Adjacent buckets therefore split the increase across their common boundary exactly.
CREATE OR REPLACE FUNCTION flux.interpolated_delta(
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
