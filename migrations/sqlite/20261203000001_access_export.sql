-- The right of access: an export of everything held on a person is logged with the reason
-- given (NULL for the reads of unmasked fields, which give none), and reads the person's
-- segment entries and exits and lifecycle transitions by customer.
ALTER TABLE access_log ADD COLUMN reason TEXT;
CREATE INDEX segment_log_customer ON segment_log (customer_id);
CREATE INDEX lifecycle_transitions_customer ON lifecycle_transitions (customer_id);
