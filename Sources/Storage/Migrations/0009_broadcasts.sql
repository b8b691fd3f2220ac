-- Broadcasts: one template to every member carrying any of some tags, now or at a time, fanned out
-- in batches by scheduler jobs. And a push's "sending" state: claimed for one attempt before the
-- platform is called, so a worker that dies during the call never has its push sent twice.

CREATE TABLE broadcasts (
    id          bigserial   PRIMARY KEY,
    template    text        NOT NULL REFERENCES push_templates (code),
    tags        text[]      NOT NULL,
    due_at      timestamptz NOT NULL,
    status      text        NOT NULL CHECK (status IN ('scheduled', 'fanning_out', 'fanned_out', 'cancelled')),
    recipients  integer     NOT NULL DEFAULT 0,
    cursor      bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE pushes ADD COLUMN broadcast_id bigint REFERENCES broadcasts (id);
CREATE INDEX pushes_broadcast_idx ON pushes (broadcast_id, status) WHERE broadcast_id IS NOT NULL;

ALTER TABLE pushes DROP CONSTRAINT pushes_status_check;
ALTER TABLE pushes ADD CONSTRAINT pushes_status_check CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'user_block',
    'system_failed', 'unsubscribed', 'refused', 'deferred', 'dead', 'cancelled'));
