-- Audiences: the brand's tags, the rules that set them from events on sliding windows, saved
-- segments, and the profile attributes a portrait shows.

CREATE TABLE tags (
    code        text        PRIMARY KEY,
    name        text        NOT NULL,
    tag_group   text,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A member's tag is held by sources (`manual`, `rule:<code>`, a module's name): one row each, and the
-- member has the tag while any row lasts. `expires_at` is when a rule's window slides past the
-- events that earned it (NULL: until let go). Readers ignore rows past `expires_at`; the expiry job
-- deletes them. Rows from before this migration (merges, tests) were set by hand: `manual`.
ALTER TABLE member_tags ADD COLUMN source text NOT NULL DEFAULT 'manual';
ALTER TABLE member_tags ADD COLUMN expires_at timestamptz;
ALTER TABLE member_tags DROP CONSTRAINT member_tags_pkey;
ALTER TABLE member_tags ADD PRIMARY KEY (member_id, tag, source);
-- Segments and broadcasts select by tag over every member.
CREATE INDEX member_tags_tag_idx ON member_tags (tag, member_id);
CREATE INDEX member_tags_expiry_idx ON member_tags (expires_at) WHERE expires_at IS NOT NULL;
-- Segments select by app over every member.
CREATE INDEX member_identities_app_idx ON member_identities (app, member_id);

-- Tag rules. `id` is new for every generation of a rule (a change starts it over), so counts of a
-- former generation never mix with the new one. `state`: backfilling while stored history is being
-- counted, then live. `cursor` is the backfill's next `occurred_at`, `scanned` and `total` its
-- progress in events.
CREATE SEQUENCE tag_rule_ids AS integer;
CREATE TABLE tag_rules (
    code        text        PRIMARY KEY,
    id          integer     NOT NULL UNIQUE,
    definition  jsonb       NOT NULL,
    state       text        NOT NULL,
    cursor      timestamptz,
    window_from timestamptz,
    backfill_to timestamptz,
    scanned     bigint      NOT NULL DEFAULT 0,
    total       bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row, bumped by every rule change under the rules lock: a pipeline batch that sees another
-- version reloads the rules inside its transaction.
CREATE TABLE tag_rules_version (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    version     bigint      NOT NULL
);
INSERT INTO tag_rules_version (version) VALUES (0);

-- Matching events per rule, member and hour (hours since 1970, UTC): what a window sums. Pruned
-- once an hour is older than its rule's window.
CREATE TABLE tag_rule_counts (
    rule_id     integer     NOT NULL,
    member_id   bigint      NOT NULL,
    hour        integer     NOT NULL,
    events      integer     NOT NULL,
    PRIMARY KEY (rule_id, member_id, hour)
);

-- While a rule backfills, the events live batches counted for it, so the backfill skips them. The
-- backfill deletes them when it is done.
CREATE TABLE tag_rule_seen (
    rule_id     integer     NOT NULL,
    event_id    text        NOT NULL,
    PRIMARY KEY (rule_id, event_id)
);

CREATE TABLE segments (
    code        text        PRIMARY KEY,
    name        text        NOT NULL,
    match       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Profile attributes (gender, city, birthday…) by member, from platform profiles and the
-- `member.profile_updated` business event; the newest event wins.
CREATE TABLE member_attributes (
    member_id   bigint      NOT NULL,
    name        text        NOT NULL,
    value       jsonb       NOT NULL,
    source      text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (member_id, name)
);

-- The member a member id stands for now: itself, or the member it was merged into (and so on).
CREATE FUNCTION member_survivor(start bigint) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    current bigint := start;
    next bigint;
BEGIN
    FOR depth IN 1..64 LOOP
        SELECT merged_into INTO next FROM members WHERE id = current;
        IF next IS NULL THEN RETURN current; END IF;
        current := next;
    END LOOP;
    RETURN current;
END $$;

-- Pruning a window's old hours reads by rule and hour.
CREATE INDEX tag_rule_counts_hour_idx ON tag_rule_counts (rule_id, hour);

-- Rule ids a change or a deletion retired: their counts and seen events are deleted by the expiry
-- job, outside the rules lock (a busy rule has millions of rows).
CREATE TABLE tag_rule_retired (
    id          integer     PRIMARY KEY,
    retired_at  timestamptz NOT NULL DEFAULT now()
);
