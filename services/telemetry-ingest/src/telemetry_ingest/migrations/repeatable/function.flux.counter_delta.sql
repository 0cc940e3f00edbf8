-- flux.interpolated_delta as one SQL expression, with the same operations in the same order, so its results are
-- the same to the bit (test_stored_deltas.py checks it against the PL/pgSQL function). SQL so that the planner
-- inlines it into the refresh's statements (docs/decisions/2026-12-04-stored-rollup-deltas.md). STABLE, not
-- IMMUTABLE, because timestamptz + interval is only STABLE and an IMMUTABLE SQL function that calls it is not
-- inlined.
CREATE OR REPLACE FUNCTION flux.counter_delta(
    summary flux.counter_summary,
    bucket_start timestamptz,
    bucket_width interval,
    previous flux.counter_summary,
    following flux.counter_summary
)
RETURNS double precision
LANGUAGE sql
STABLE
PARALLEL SAFE
AS $$
    -- delta := last - first + resets; then, with a previous reading before the bucket, delta := delta +
    -- neighbour - boundary; then, with a following reading after it, delta := delta + boundary - last.
    SELECT CASE
        WHEN following.first_time >= bucket_start + bucket_width AND summary.last_time < bucket_start + bucket_width
        THEN CASE
                WHEN previous.last_time < bucket_start AND summary.first_time > bucket_start
                THEN summary.last_value - summary.first_value + summary.reset_total
                    + (summary.first_value
                       + CASE WHEN summary.first_value < previous.last_value THEN previous.last_value ELSE 0 END)
                    - (previous.last_value
                       + ((summary.first_value
                           + CASE WHEN summary.first_value < previous.last_value THEN previous.last_value ELSE 0 END)
                          - previous.last_value)
                       * extract(epoch FROM bucket_start - previous.last_time)
                       / extract(epoch FROM summary.first_time - previous.last_time))
                ELSE summary.last_value - summary.first_value + summary.reset_total
            END
            + (summary.last_value
               + ((following.first_value
                   + CASE WHEN following.first_value < summary.last_value THEN summary.last_value ELSE 0 END)
                  - summary.last_value)
               * extract(epoch FROM bucket_start + bucket_width - summary.last_time)
               / extract(epoch FROM following.first_time - summary.last_time))
            - summary.last_value
        ELSE CASE
                WHEN previous.last_time < bucket_start AND summary.first_time > bucket_start
                THEN summary.last_value - summary.first_value + summary.reset_total
                    + (summary.first_value
                       + CASE WHEN summary.first_value < previous.last_value THEN previous.last_value ELSE 0 END)
                    - (previous.last_value
                       + ((summary.first_value
                           + CASE WHEN summary.first_value < previous.last_value THEN previous.last_value ELSE 0 END)
                          - previous.last_value)
                       * extract(epoch FROM bucket_start - previous.last_time)
                       / extract(epoch FROM summary.first_time - previous.last_time))
                ELSE summary.last_value - summary.first_value + summary.reset_total
            END
    END
$$;
