-- The dead letters of one invoice (its detail and ?invoice=): records about an invoice are keyed by its uuid.
CREATE INDEX dead_letters_record_key ON dead_letters (record_key);
