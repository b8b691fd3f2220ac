-- Durable delayed and periodic jobs (the scheduler), and the business calendar for working days.

-- One row per job. A job is claimed by setting status 'running' with a lease (locked_until); a
-- process that dies mid-job leaves the lease to expire and the job to be claimed again.
-- unique_key makes an enqueue idempotent for the job's whole life: a second enqueue with the same
-- key is a no-op, also after the first one ran (periodic jobs key on their period).
CREATE TABLE jobs (
    id           bigserial   PRIMARY KEY,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}',
    unique_key   text        UNIQUE,
    status       text        NOT NULL DEFAULT 'scheduled'
                             CHECK (status IN ('scheduled', 'running', 'done', 'failed', 'cancelled')),
    due_at       timestamptz NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL DEFAULT 10 CHECK (max_attempts > 0),
    last_error   text,
    locked_by    text,
    locked_until timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- What the claim query walks: due jobs in due order, and leases to take back.
CREATE INDEX jobs_due_idx ON jobs (due_at) WHERE status = 'scheduled';
CREATE INDEX jobs_lease_idx ON jobs (locked_until) WHERE status = 'running';
CREATE INDEX jobs_operator_idx ON jobs (status, kind, id);

-- Periodic schedules: the last period the leader enqueued, so a new leader continues from there.
CREATE TABLE periodic_jobs (
    name         text        PRIMARY KEY,
    cron         text        NOT NULL,
    time_zone    text        NOT NULL,
    last_fire_at timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Declared exceptions to Monday-Friday: public holidays, and weekend days worked instead (调休).
CREATE TABLE business_days (
    day        date        PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('holiday', 'workday')),
    name       text        NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Pending grants written before jobs existed mature through jobs like the new ones.
INSERT INTO jobs (kind, payload, unique_key, due_at)
SELECT 'loyalty.mature', jsonb_build_object('ledgerId', id), 'loyalty.mature:' || id, due_at
FROM ledger WHERE kind = 'pending' AND settled_at IS NULL AND due_at IS NOT NULL;
