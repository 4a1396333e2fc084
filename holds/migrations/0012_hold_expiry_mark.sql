-- Expiring a hold without index work: a heap-only (HOT) update.
--
-- The sweep found due holds through `holds_open_expiry ... WHERE hold_state = 'open'`. An index
-- names its predicate's columns, so every change of a hold's state (expiry, clearing, reversal)
-- was a non-HOT update: a new row version with a new primary-key entry and its WAL. Indexing
-- every hold's expiry instead (`hold_expires_at` never changes when a hold closes) makes those
-- updates HOT; measured alone on 1,000,000 due holds, the sweep's backend spent 16.8 against
-- 22.3 us of CPU per hold and wrote 651 against 732 B of WAL (benchmarks/README.md, "Session 5").
--
-- The index now also holds closed holds, so the sweep must not read it from the beginning: it
-- starts at a low-water mark, `hold_expiry_mark.swept_to`, below which no hold is open (holdfast
-- verify proves it). Only a complete pass of the sweep raises the mark (clearing/sweep.py), to
-- the least of: the time it was asked to sweep to, the database's clock when it began, and the
-- expiry of any due hold it read but left open. Two kinds of writer could put an open hold
-- below the mark while a pass runs, and neither can:
--   * a hold placed with an expiry at least a day ahead of the database's clock (every hold
--     the hot path places with a window of a day or more) lies above any mark a pass running
--     now can set, unless its transaction ran for a day;
--   * a hold placed or extended to expire sooner (a late advice of an old authorisation, a
--     short window) goes through the trigger below: it takes a share lock on the mark's row,
--     which a pass takes FOR UPDATE when it begins, and it never expires before the clock.
--     Either it committed before the pass began (the pass reads it), or its clock, and so its
--     expiry, is after the pass began.

CREATE TABLE hold_expiry_mark (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    swept_to timestamptz NOT NULL
);

INSERT INTO hold_expiry_mark (swept_to)
SELECT least(now(), coalesce(min(hold_expires_at), now()))
  FROM authorizations WHERE hold_state = 'open';

CREATE INDEX holds_expiry ON authorizations (hold_expires_at) WHERE hold_expires_at IS NOT NULL;
DROP INDEX holds_open_expiry;

CREATE FUNCTION hf_hold_expiry_floor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- released when this transaction ends: a pass beginning meanwhile waits for it
    PERFORM 1 FROM hold_expiry_mark FOR KEY SHARE;
    NEW.hold_expires_at := greatest(NEW.hold_expires_at, clock_timestamp());
    RETURN NEW;
END $$;

CREATE TRIGGER authorizations_hold_expiry_floor
    BEFORE INSERT OR UPDATE OF hold_expires_at ON authorizations
    FOR EACH ROW
    WHEN (NEW.hold_state = 'open' AND NEW.hold_expires_at < clock_timestamp() + interval '1 day')
    EXECUTE FUNCTION hf_hold_expiry_floor();

-- the holds due first, from the mark (below it every hold is closed)
CREATE OR REPLACE FUNCTION hf_expire(p_now timestamptz, p_limit integer)
RETURNS TABLE (holds_expired integer, amount_released bigint) LANGUAGE sql AS $$
    SELECT * FROM hf_expire_holds(p_now, ARRAY(
        SELECT h.id FROM holds h
         WHERE h.state = 'open' AND h.expires_at <= p_now
           AND h.expires_at >= (SELECT m.swept_to FROM hold_expiry_mark m)
         ORDER BY h.expires_at LIMIT p_limit))
$$;
