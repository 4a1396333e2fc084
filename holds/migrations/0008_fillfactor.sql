-- Leave a tenth of every new page of the authorisation tables free, so the rows' later updates
-- (a reversal, a clearing, the expiry sweep changing an authorisation's state) can be written on
-- the same page as heap-only tuples: no new primary-key entry, less WAL. Applies to pages
-- written from now on; existing pages fill as before until rewritten.
ALTER TABLE authorizations SET (fillfactor = 90);
ALTER TABLE holds SET (fillfactor = 90);
