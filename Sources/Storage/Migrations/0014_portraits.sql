-- Member portraits read a member's recent events by subject. Platform and server events are found
-- by (platform, app, openid, occurred_at) already; beacons a member token proved carry no openid,
-- only the member id, so they get an index of their own. Partial: every other event has no member
-- id, and only token beacons enter it.
CREATE INDEX events_member_idx ON events (member_id, occurred_at) WHERE member_id IS NOT NULL;

-- A survivor's portrait includes what members merged into it sent with their tokens: their ids
-- are found from the survivor through the merges.
CREATE INDEX member_merges_into_idx ON member_merges (into_member);
