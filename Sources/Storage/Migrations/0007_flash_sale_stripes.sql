-- Striped stock for very large sales: the campaign's Redis stock is spread over this many keys,
-- each under its own hash tag, so a Redis Cluster can serve them from different shards. Fixed
-- once the campaign exists: members' counters live on the stripe their id maps to.
ALTER TABLE flash_sales ADD COLUMN stock_slots integer NOT NULL DEFAULT 1 CHECK (stock_slots BETWEEN 1 AND 64);
