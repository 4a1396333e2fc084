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
--     short window) goes through hf_hold_expiry_floor_at below: it takes a share lock on the
--     mark's row, which a pass takes FOR UPDATE when it begins, and it never expires before
--     the clock.
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

-- A hold's expiry, no earlier than the clock and taken under a share lock on the mark's row (see
-- above): for an expiry within a day of the clock only; the callers test that first, so the
-- hot path's usual hold (a week ahead) costs one comparison.
CREATE FUNCTION hf_hold_expiry_floor_at(p_expires timestamptz) RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
    -- released when this transaction ends: a pass beginning meanwhile waits for it
    PERFORM 1 FROM hold_expiry_mark FOR KEY SHARE;
    RETURN greatest(p_expires, clock_timestamp());
END $$;

-- every update that sets a hold's expiry: INSERT INTO holds (hf_place_hold, a late advice), an
-- incremental; the hot path's INSERT of a new hold calls the function itself (below), as a
-- trigger on INSERT cost each authorisation ~5 us of PostgreSQL CPU (~4 %, measured)
CREATE FUNCTION hf_hold_expiry_floor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.hold_expires_at := hf_hold_expiry_floor_at(NEW.hold_expires_at);
    RETURN NEW;
END $$;

CREATE TRIGGER authorizations_hold_expiry_floor
    BEFORE UPDATE OF hold_expires_at ON authorizations
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

-- 0011's hf_authorize, unchanged but for the new hold's expiry (floored as above when it is
-- within a day of the clock)
CREATE OR REPLACE FUNCTION hf_authorize(
    p_provider text, p_provider_id text, p_sequence integer, p_authorization_id text,
    p_parent_id text, p_card_id text, p_amount bigint, p_currency text, p_partial boolean,
    p_rule_reason text, p_policy_version integer, p_counters jsonb, p_request_hash text,
    p_now timestamptz, p_hold_expires timestamptz, p_merchant_id text, p_merchant_name text,
    p_mcc text, p_country text, p_channel text, p_stand_in boolean, p_stand_in_cap bigint,
    p_counted boolean)
RETURNS TABLE (status text, authorization_id text, decision text, approved_amount bigint,
               reason text, stand_in boolean, counted boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_card_found boolean := false;
    v_card_state text;
    v_card_expires text;
    v_account text;
    v_currency text;
    v_posted bigint;
    v_held bigint;
    v_overdraft bigint;
    parent authorizations%ROWTYPE;
    prior authorization_requests%ROWTYPE;
    v_auth_id text := COALESCE(p_parent_id, p_authorization_id);
    v_incremental boolean := p_parent_id IS NOT NULL;
    v_reason text := p_rule_reason;
    v_available bigint;
    v_approved bigint := 0;
BEGIN
    IF v_incremental THEN
        -- lock order everywhere: the hold (its authorisation's row), then the account
        SELECT * INTO parent FROM authorizations a WHERE a.id = v_auth_id FOR UPDATE;
    END IF;
    SELECT true, c.state, c.expires, a.id, a.currency, a.posted, a.held, a.overdraft_limit
      INTO v_card_found, v_card_state, v_card_expires, v_account, v_currency, v_posted, v_held,
           v_overdraft
      FROM cards c JOIN accounts a ON a.id = c.account_id
     WHERE c.id = p_card_id
       FOR NO KEY UPDATE OF a;

    -- replay check after the locks: a concurrent retry of this request waits on them above and
    -- then finds the first one's committed decision here
    SELECT * INTO prior FROM authorization_requests r
     WHERE r.provider = p_provider AND r.provider_id = p_provider_id AND r.sequence = p_sequence;
    IF FOUND THEN
        IF prior.request_hash <> p_request_hash THEN
            RETURN QUERY SELECT 'conflict'::text, prior.authorization_id, 'decline'::text,
                0::bigint, 'duplicate'::text, p_stand_in, false;
        ELSE
            RETURN QUERY SELECT 'replay'::text, prior.authorization_id, prior.decision,
                prior.approved_amount, prior.reason, prior.stand_in, prior.counted;
        END IF;
        RETURN;
    END IF;

    IF v_incremental AND (parent.id IS NULL OR parent.provider <> p_provider
                          OR parent.card_id <> p_card_id) THEN
        -- an incremental must name an authorisation of this provider and card; without one it
        -- is declined and recorded as an authorisation of its own, so a retry gets the same
        -- answer
        v_reason := hf_first_reason(v_reason, 'do_not_honor');
        v_incremental := false;
        v_auth_id := p_authorization_id;
    END IF;
    IF NOT v_incremental AND EXISTS (SELECT 1 FROM authorizations a WHERE a.id = v_auth_id) THEN
        RETURN QUERY SELECT 'conflict'::text, v_auth_id, 'decline'::text, 0::bigint,
            'duplicate'::text, p_stand_in, false;
        RETURN;
    END IF;

    IF NOT coalesce(v_card_found, false) THEN
        v_reason := 'invalid_card';
    ELSIF v_card_state = 'terminated' THEN
        v_reason := hf_first_reason(v_reason, 'invalid_card');
    ELSIF v_card_state = 'frozen' THEN
        v_reason := hf_first_reason(v_reason, 'card_restricted');
    ELSIF v_card_expires IS NOT NULL
          AND to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM') > v_card_expires THEN
        v_reason := hf_first_reason(v_reason, 'card_expired');
    END IF;
    IF v_reason IS NULL AND v_currency <> p_currency THEN
        v_reason := 'do_not_honor';
    END IF;
    IF v_reason IS NULL AND v_incremental AND parent.hold_state IS DISTINCT FROM 'open' THEN
        v_reason := 'do_not_honor';
    END IF;
    IF v_reason IS NULL AND p_stand_in AND p_amount > p_stand_in_cap THEN
        v_reason := 'amount_limit_exceeded';
    END IF;
    IF v_reason IS NULL THEN
        v_available := v_posted - v_held + v_overdraft;
        IF v_available >= p_amount THEN
            v_approved := p_amount;
            v_reason := 'approved';
        ELSIF p_partial AND v_available > 0 THEN
            v_approved := v_available;
            v_reason := 'partial_approval';
        ELSE
            v_reason := 'insufficient_funds';
        END IF;
    END IF;

    IF v_incremental THEN
        -- the authorisation and its hold in one row update (v_approved > 0 only on an open hold)
        UPDATE authorizations a
           SET requested_amount = a.requested_amount + p_amount,
               approved_amount = a.approved_amount + v_approved, updated_at = p_now,
               hold_authorized = a.hold_authorized + v_approved,
               hold_remaining = a.hold_remaining + v_approved,
               hold_expires_at = CASE WHEN v_approved > 0
                                      THEN greatest(a.hold_expires_at, p_hold_expires)
                                      ELSE a.hold_expires_at END,
               hold_updated_at = CASE WHEN v_approved > 0 THEN p_now ELSE a.hold_updated_at END
         WHERE a.id = v_auth_id;
    ELSIF v_approved > 0 THEN
        INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency,
            state, requested_amount, approved_amount, merchant_id, merchant_name, mcc, country,
            channel, created_at, updated_at, hold_state, hold_authorized, hold_posted,
            hold_over_posted, hold_released, hold_remaining, hold_expires_at, hold_created_at,
            hold_updated_at, hold_forced)
        VALUES (v_auth_id, p_provider, p_provider_id, p_card_id, v_account, p_currency,
            'pending', p_amount, v_approved, p_merchant_id, p_merchant_name, p_mcc, p_country,
            p_channel, p_now, p_now, 'open', v_approved, 0, 0, 0, v_approved,
            CASE WHEN p_hold_expires >= clock_timestamp() + interval '1 day' THEN p_hold_expires
                 ELSE hf_hold_expiry_floor_at(p_hold_expires) END,
            p_now, p_now, false);
    ELSE
        INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency,
            state, requested_amount, approved_amount, merchant_id, merchant_name, mcc, country,
            channel, created_at, updated_at)
        VALUES (v_auth_id, p_provider, p_provider_id, p_card_id, v_account, p_currency,
            'declined', p_amount, 0, p_merchant_id, p_merchant_name, p_mcc, p_country,
            p_channel, p_now, p_now);
    END IF;

    INSERT INTO authorization_requests (provider, provider_id, sequence, authorization_id, kind,
        amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,
        policy_version, counters, request_hash, counted, decided_at)
    VALUES (p_provider, p_provider_id, p_sequence, v_auth_id,
        CASE WHEN p_parent_id IS NULL THEN 'initial' ELSE 'incremental' END, p_amount, p_currency,
        p_partial, CASE WHEN v_approved > 0 THEN 'approve' ELSE 'decline' END, v_approved,
        v_reason, p_stand_in, p_policy_version, p_counters, p_request_hash, p_counted, p_now);

    IF v_approved > 0 THEN
        UPDATE accounts a SET held = a.held + v_approved, updated_at = p_now
         WHERE a.id = v_account;
    END IF;

    RETURN QUERY SELECT 'new'::text, v_auth_id,
        CASE WHEN v_approved > 0 THEN 'approve' ELSE 'decline' END, v_approved, v_reason,
        p_stand_in, p_counted;
END $$;
