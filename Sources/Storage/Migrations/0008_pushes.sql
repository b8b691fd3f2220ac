-- Pushes: message templates, the triggers that send them, and every push with what became of it.

CREATE TABLE push_templates (
    code               text        PRIMARY KEY,
    platform           text        NOT NULL CHECK (platform IN ('wechat', 'alipay')),
    app_id             text        NOT NULL,
    template_id        text        NOT NULL,
    fields             jsonb       NOT NULL,
    url                text,
    miniprogram_appid  text,
    miniprogram_page   text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE push_triggers (
    code        text        PRIMARY KEY,
    event       text        NOT NULL,
    conditions  jsonb       NOT NULL DEFAULT '{}',
    template    text        NOT NULL REFERENCES push_templates (code),
    enabled     boolean     NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_triggers_event_idx ON push_triggers (event);

-- One row per push. The id is deterministic (the trigger and the event that caused it, or the
-- broadcast and the member), so a redelivered event makes no second push. status: pending (being
-- sent, or waiting for a retry), sent (the platform took it), delivered / user_block /
-- system_failed (the platform's receipt), unsubscribed / refused (not sent, never retried),
-- deferred (quota: waiting for it to reset), dead (retries exhausted; last_error says why).
CREATE TABLE pushes (
    id            text        PRIMARY KEY,
    member_id     bigint,
    platform      text        NOT NULL,
    app_id        text        NOT NULL,
    openid        text        NOT NULL,
    template      text        NOT NULL,
    trigger_code  text,
    status        text        NOT NULL CHECK (status IN ('pending', 'sent', 'delivered', 'user_block', 'system_failed',
                                                         'unsubscribed', 'refused', 'deferred', 'dead')),
    -- The rendered message (fields, url, page), so a retry sends what the first attempt would have.
    message       jsonb       NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    msg_id        bigint,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pushes_member_idx ON pushes (member_id, created_at DESC);
CREATE INDEX pushes_status_idx ON pushes (status, created_at DESC);
CREATE UNIQUE INDEX pushes_msg_idx ON pushes (app_id, msg_id) WHERE msg_id IS NOT NULL;

-- A member's name as the platform gave it, for greetings; empty until known.
ALTER TABLE members ADD COLUMN nickname text NOT NULL DEFAULT '';
