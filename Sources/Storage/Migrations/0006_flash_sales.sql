-- Flash sales (秒杀): campaigns, and the orders their reservations become. Redis holds the live
-- stock and per-member counts; these tables are the truth they are reconciled against.

CREATE TABLE flash_sales (
    id                      text        PRIMARY KEY,
    sku                     text        NOT NULL,
    title                   text        NOT NULL,
    price                   bigint      NOT NULL CHECK (price >= 0),
    stock                   integer     NOT NULL CHECK (stock >= 0),
    per_member_limit        integer     NOT NULL CHECK (per_member_limit > 0),
    start_at                timestamptz NOT NULL,
    end_at                  timestamptz NOT NULL,
    payment_timeout_seconds integer     NOT NULL CHECK (payment_timeout_seconds > 0),
    audience_tag            text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (end_at > start_at)
);

-- One order per reservation: the reservation id is the key, so a redelivered reservation makes
-- no second order. status: reserved (waiting for payment), paid, expired (unit back in stock),
-- refund_required (paid after it expired: the money goes back, the unit does not).
CREATE TABLE flash_orders (
    reservation_id text        PRIMARY KEY,
    sale_id        text        NOT NULL REFERENCES flash_sales (id),
    member_id      bigint      NOT NULL,
    quantity       integer     NOT NULL CHECK (quantity > 0),
    amount         bigint      NOT NULL,
    status         text        NOT NULL CHECK (status IN ('reserved', 'paid', 'expired', 'refund_required')),
    pay_by         timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    paid_at        timestamptz,
    expired_at     timestamptz,
    payment_ref    text
);
CREATE INDEX flash_orders_sale_idx ON flash_orders (sale_id, status);
CREATE INDEX flash_orders_member_idx ON flash_orders (member_id, sale_id);
