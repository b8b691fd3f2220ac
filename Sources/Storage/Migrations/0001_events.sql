-- Every normalized event, as the behavior pool persists it. The event id is the platform-derived,
-- deterministic id of the envelope: a redelivered or retried event hits the primary key and is
-- stored once.
CREATE TABLE events (
    id          text        PRIMARY KEY,
    platform    text        NOT NULL,
    app         text        NOT NULL,
    kind        text        NOT NULL,
    openid      text,
    unionid     text,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    attributes  jsonb       NOT NULL DEFAULT '{}',
    stored_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_subject_idx ON events (platform, app, openid, occurred_at);
CREATE INDEX events_kind_idx ON events (kind, occurred_at);
