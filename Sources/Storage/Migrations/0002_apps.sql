-- Platform apps registered through the admin API, with the credentials the gateway verifies their
-- callbacks with. `credentials` is JSON, or `v1:`-prefixed AES-GCM ciphertext of that JSON when
-- FANFLOW_SECRET_KEY is set.
CREATE TABLE apps (
    platform    text        NOT NULL,
    app_id      text        NOT NULL,
    credentials text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, app_id)
);
