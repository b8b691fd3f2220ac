-- The points engine: members and their platform identities, the brand's rules, the ledger (积分流水)
-- and the balances it adds up to. The ledger is the truth; Redis counters are rebuilt from it.

CREATE TABLE members (
    id          bigserial   PRIMARY KEY,
    points      bigint      NOT NULL DEFAULT 0,
    growth      bigint      NOT NULL DEFAULT 0,
    -- Points and growth earned but not yet granted (purchases maturing after delivery).
    pending_points bigint   NOT NULL DEFAULT 0,
    pending_growth bigint   NOT NULL DEFAULT 0,
    level       text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (platform, app, openid): the primary key is what makes concurrent first sightings of
-- one openid end in one member.
CREATE TABLE member_identities (
    platform    text        NOT NULL,
    app         text        NOT NULL,
    openid      text        NOT NULL,
    member_id   bigint      NOT NULL REFERENCES members (id),
    unionid     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, app, openid)
);
CREATE INDEX member_identities_member_idx ON member_identities (member_id);
CREATE INDEX member_identities_unionid_idx ON member_identities (platform, unionid) WHERE unionid IS NOT NULL;

CREATE TABLE member_tags (
    member_id   bigint      NOT NULL REFERENCES members (id),
    tag         text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, tag)
);

-- Rules as the admin API stores them: the validated JSON definition is the source of the worker's
-- compiled rule. `updated_at` lets workers see a change without a restart.
CREATE TABLE points_rules (
    code        text        PRIMARY KEY,
    definition  jsonb       NOT NULL,
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Small documents of program-wide settings (the level table).
CREATE TABLE loyalty_settings (
    name        text        PRIMARY KEY,
    value       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every change to a balance. kind: grant, pending (earned, not yet granted; `due_at` says when),
-- matured, cancelled (a pending grant refunded before it matured), reversal (a granted one refunded).
-- `ref` ties entries of one business object together (an order id) so a refund finds its grant.
CREATE TABLE ledger (
    id          bigserial   PRIMARY KEY,
    member_id   bigint      NOT NULL REFERENCES members (id),
    kind        text        NOT NULL,
    rule        text,
    points      bigint      NOT NULL,
    growth      bigint      NOT NULL,
    reason      text        NOT NULL,
    event_id    text,
    ref         text,
    occurred_at timestamptz NOT NULL,
    due_at      timestamptz,
    -- For a pending entry: set once it matured or was cancelled.
    settled_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The last guard against double counting: one entry of a kind per event, rule and member, whatever
-- Redis remembered.
CREATE UNIQUE INDEX ledger_once_idx ON ledger (event_id, rule, member_id, kind) WHERE event_id IS NOT NULL;
CREATE INDEX ledger_member_idx ON ledger (member_id, id);
CREATE INDEX ledger_ref_idx ON ledger (member_id, rule, ref) WHERE ref IS NOT NULL;
CREATE INDEX ledger_due_idx ON ledger (due_at) WHERE kind = 'pending' AND settled_at IS NULL;

-- Events FanFlow emits (level changes), written in the same transaction as the change and
-- published by a relay afterwards, so a crash between commit and publish loses none.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    message_id    text        NOT NULL UNIQUE,
    routing_key   text        NOT NULL,
    -- The envelope's JSON, byte for byte as it is published.
    body          text        NOT NULL,
    claimed_until timestamptz NOT NULL DEFAULT '-infinity',
    created_at    timestamptz NOT NULL DEFAULT now()
);
