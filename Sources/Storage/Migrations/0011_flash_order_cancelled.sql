-- A reservation whose hold was released before its order arrived (the gateway rolled it back
-- after a publish the broker took but did not confirm in time, or the periodic reconcile
-- reclaimed it) is recorded as a cancelled order: it holds no unit, has no expiry, and a payment
-- for it is flagged for refund. The status check is found by what it checks, not by its name.
DO $$
DECLARE
    existing text;
BEGIN
    FOR existing IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'flash_orders'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%'
    LOOP
        EXECUTE format('ALTER TABLE flash_orders DROP CONSTRAINT %I', existing);
    END LOOP;
END $$;
ALTER TABLE flash_orders ADD CONSTRAINT flash_orders_status_check
    CHECK (status IN ('reserved', 'paid', 'expired', 'refund_required', 'cancelled'));
