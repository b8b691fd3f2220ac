-- Product codes (一物一码), the points mall (积分商城), expiring points and phone merges.

-- One row per printed code. `verified_by` is set once, by the first member who verifies it: that
-- row is also the member's product archive.
CREATE TABLE product_codes (
    code        text        PRIMARY KEY,
    sku         text        NOT NULL,
    batch       text,
    imported_at timestamptz NOT NULL DEFAULT now(),
    verified_by bigint      REFERENCES members (id),
    verified_at timestamptz
);
CREATE INDEX product_codes_member_idx ON product_codes (verified_by) WHERE verified_by IS NOT NULL;

CREATE TABLE gifts (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    points      bigint      NOT NULL CHECK (points > 0),
    stock       bigint      NOT NULL CHECK (stock >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A member's request id makes a redemption idempotent: a retried request finds its row.
CREATE TABLE redemptions (
    id          bigserial   PRIMARY KEY,
    member_id   bigint      NOT NULL REFERENCES members (id),
    request_id  text        NOT NULL,
    gift_id     text        NOT NULL REFERENCES gifts (id),
    quantity    integer     NOT NULL CHECK (quantity > 0),
    points      bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (member_id, request_id)
);

-- Points granted with an expiry; the expiry sweep sets settled_at when it has expired what was left.
ALTER TABLE ledger ADD COLUMN expires_at timestamptz;
CREATE INDEX ledger_expiry_idx ON ledger (expires_at) WHERE expires_at IS NOT NULL AND settled_at IS NULL;

-- A bound phone number is one person: binding it to a second member merges that member into the first.
ALTER TABLE members ADD COLUMN phone text UNIQUE;
ALTER TABLE members ADD COLUMN merged_into bigint REFERENCES members (id);
CREATE TABLE member_merges (
    id          bigserial   PRIMARY KEY,
    from_member bigint      NOT NULL REFERENCES members (id),
    into_member bigint      NOT NULL REFERENCES members (id),
    phone       text        NOT NULL,
    event_id    text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
