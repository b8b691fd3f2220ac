-- Dead letters an operator can list, read, replay and drop. The keeper (every worker process)
-- consumes each `<queue>.dead` queue and stores every message here before acking it: one row per
-- (queue, message id), so a second copy of the same death (a dead-letter publish that timed out
-- and was sent again) changes nothing, and a message that dies again after a replay reopens its
-- row (deaths + 1). Ids are stable for the operator's commands.
CREATE TABLE dead_letters (
    id                bigserial   PRIMARY KEY,
    queue             text        NOT NULL,
    -- The AMQP message id (the envelope's id); `sha256:<hex of the body>` for a message without one.
    message_id        text        NOT NULL,
    reason            text        NOT NULL,
    attempts          integer     NOT NULL,
    first_failure     timestamptz NOT NULL,
    last_failure      timestamptz NOT NULL,
    routing_key       text,
    content_type      text,
    -- The original message, byte for byte: replay publishes exactly this.
    body              bytea       NOT NULL,
    deaths            integer     NOT NULL DEFAULT 1,
    status            text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'dropped')),
    replayed_count    integer     NOT NULL DEFAULT 0,
    last_replayed_at  timestamptz,
    dropped_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (queue, message_id)
);

-- The depth gauge and the default listing: open letters per queue.
CREATE INDEX dead_letters_open_idx ON dead_letters (queue, id) WHERE status = 'open';
