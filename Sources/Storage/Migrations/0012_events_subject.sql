-- Who vouched for an event's subject, kept with the event: `verified` is false for a beacon that
-- only claims its openid, true for platform-signed webhooks, signed server events and beacons
-- with a member token; `member_id` is the member a token named (NULL otherwise).
--
-- Rows stored before these columns existed get the reading the workers give an envelope without
-- the field: beacons (`h5`) were never vouched for, every other platform's subject was. Adding a
-- column with a constant default is a catalogue change (PostgreSQL 11+); only the old `h5` rows
-- are rewritten, once, inside this migration's transaction.
ALTER TABLE events ADD COLUMN member_id bigint;
ALTER TABLE events ADD COLUMN verified boolean NOT NULL DEFAULT true;
UPDATE events SET verified = false WHERE platform = 'h5';
