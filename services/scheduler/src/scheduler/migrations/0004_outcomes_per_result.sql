-- An action may have two outcomes: applied (the write read back), then failed (the device did not follow it:
-- an EV charger drawing above the profile it accepted, seen in its next meter values), or failed then applied (a
-- retry under the same action id). Each is stored once; a redelivery of either changes nothing.
ALTER TABLE scheduler.device_outcomes DROP CONSTRAINT device_outcomes_pkey;
ALTER TABLE scheduler.device_outcomes ADD PRIMARY KEY (action_id, applied);
