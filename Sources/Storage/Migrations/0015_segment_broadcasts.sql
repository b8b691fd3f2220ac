-- Segment broadcasts: one campaign to a saved segment's members over several official accounts or
-- service windows, each member reached once, through the first of the broadcast's apps (in the
-- operator's order) they can be reached on. A tag broadcast keeps `template` and `tags`; a segment
-- broadcast has `segment` and its apps in `broadcast_apps`, and neither of those.

ALTER TABLE broadcasts ALTER COLUMN template DROP NOT NULL;
ALTER TABLE broadcasts ALTER COLUMN tags DROP NOT NULL;
-- No foreign key: segments are the Audiences domain's, and a segment deleted while its broadcast
-- fans out stops the fan-out (the batch job fails, kept for an operator) rather than the deletion.
ALTER TABLE broadcasts ADD COLUMN segment text;
ALTER TABLE broadcasts ADD CONSTRAINT broadcasts_audience_check CHECK (
    (segment IS NULL AND template IS NOT NULL AND tags IS NOT NULL) OR (segment IS NOT NULL AND template IS NULL AND tags IS NULL));

-- A segment broadcast's apps, `position` 1, 2, … in the order given: a member is sent the
-- template of the first app they can be reached on. An app appears once per broadcast.
CREATE TABLE broadcast_apps (
    broadcast_id bigint  NOT NULL REFERENCES broadcasts (id),
    position     integer NOT NULL CHECK (position >= 1),
    app_id       text    NOT NULL,
    template     text    NOT NULL REFERENCES push_templates (code),
    PRIMARY KEY (broadcast_id, position),
    UNIQUE (broadcast_id, app_id)
);

-- A broadcast's pushes counted by app and status (`GET /admin/v1/broadcasts/{id}`), and found by
-- status when it is cancelled: this index serves both, so it replaces the one by status alone
-- rather than making every broadcast push update two.
DROP INDEX pushes_broadcast_idx;
CREATE INDEX pushes_broadcast_app_idx ON pushes (broadcast_id, app_id, status) WHERE broadcast_id IS NOT NULL;
