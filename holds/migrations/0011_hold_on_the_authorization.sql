-- The hold lives on its authorisation's row.
--
-- An authorisation holds at most one hold, with the same id, account and currency, so the two
-- were one fact in two tables: every approval inserted two rows (two heap tuples, two primary-key
-- entries, two foreign-key checks) and every incremental, reversal or clearing updated two rows.
-- Measured with 10,000 hf_authorize calls in one transaction, the holds row was ~25 % of the
-- PostgreSQL CPU of an authorisation. Now the hold's parts are columns of `authorizations`
-- (hold_*, all NULL when it holds nothing: a decline), and `holds` is a view of those rows with
-- the old column names, so every reader and writer of holds keeps its SQL:
--   * SELECT / UPDATE / SELECT ... FOR UPDATE on `holds` read and write the authorisation row (a
--     simple view is updatable); locking a hold locks its authorisation, the order "hold, then
--     account" is unchanged;
--   * INSERT INTO holds places the hold on an existing authorisation without one
--     (hf_place_hold, an INSTEAD OF trigger); the hot path writes the columns in its own INSERT.
-- The constraints the table had hold on the columns; "a hold sits on its authorisation's
-- account and currency" is now true by construction.

ALTER TABLE authorizations
    ADD COLUMN hold_state       text CHECK (hold_state IN ('open', 'closed', 'expired')),
    ADD COLUMN hold_authorized  bigint CHECK (hold_authorized >= 0),
    ADD COLUMN hold_posted      bigint CHECK (hold_posted >= 0),
    ADD COLUMN hold_over_posted bigint,
    ADD COLUMN hold_released    bigint CHECK (hold_released >= 0),
    ADD COLUMN hold_remaining   bigint CHECK (hold_remaining >= 0),
    ADD COLUMN hold_expires_at  timestamptz,
    ADD COLUMN hold_created_at  timestamptz,
    ADD COLUMN hold_updated_at  timestamptz,
    ADD COLUMN hold_forced      boolean;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM holds h JOIN authorizations a ON a.id = h.id
                WHERE h.account_id IS DISTINCT FROM a.account_id OR h.currency <> a.currency) THEN
        RAISE EXCEPTION 'a hold sits on another account or currency than its authorisation: '
                        'run holdfast verify and repair it before this migration';
    END IF;
END $$;

UPDATE authorizations a
   SET hold_state = h.state, hold_authorized = h.authorized, hold_posted = h.posted,
       hold_over_posted = h.over_posted, hold_released = h.released,
       hold_remaining = h.remaining, hold_expires_at = h.expires_at,
       hold_created_at = h.created_at, hold_updated_at = h.updated_at, hold_forced = h.forced
  FROM holds h
 WHERE h.id = a.id;

DROP TABLE holds;

ALTER TABLE authorizations
    -- a hold is all there or not at all, and only on an authorisation with an account
    ADD CONSTRAINT authorizations_hold_whole CHECK (
        num_nulls(hold_state, hold_authorized, hold_posted, hold_over_posted, hold_released,
                  hold_remaining, hold_expires_at, hold_created_at, hold_updated_at,
                  hold_forced) IN (0, 10)
        AND (hold_state IS NULL OR account_id IS NOT NULL)),
    -- the parts of a hold always add up
    ADD CONSTRAINT authorizations_hold_parts CHECK (
        hold_authorized = (hold_posted - hold_over_posted) + hold_released + hold_remaining
        AND hold_over_posted >= 0 AND hold_over_posted <= hold_posted
        AND (hold_state = 'open' OR hold_remaining = 0));

CREATE INDEX holds_open_expiry ON authorizations (hold_expires_at) WHERE hold_state = 'open';

CREATE VIEW holds AS
SELECT id, account_id, currency, hold_state AS state, hold_authorized AS authorized,
       hold_posted AS posted, hold_over_posted AS over_posted, hold_released AS released,
       hold_remaining AS remaining, hold_expires_at AS expires_at,
       hold_created_at AS created_at, hold_updated_at AS updated_at, hold_forced AS forced
  FROM authorizations
 WHERE hold_state IS NOT NULL;

ALTER VIEW holds ALTER COLUMN posted SET DEFAULT 0;
ALTER VIEW holds ALTER COLUMN over_posted SET DEFAULT 0;
ALTER VIEW holds ALTER COLUMN released SET DEFAULT 0;
ALTER VIEW holds ALTER COLUMN forced SET DEFAULT false;

-- INSERT INTO holds: place the hold on its authorisation, which must exist, draw on that account
-- and currency, and hold nothing yet (the errors the table's keys used to raise).
CREATE FUNCTION hf_place_hold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    auth authorizations%ROWTYPE;
BEGIN
    SELECT * INTO auth FROM authorizations WHERE id = NEW.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hold %: no such authorisation', NEW.id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF auth.hold_state IS NOT NULL THEN
        RAISE EXCEPTION 'hold %: the authorisation holds already', NEW.id
            USING ERRCODE = 'unique_violation';
    ELSIF auth.account_id IS DISTINCT FROM NEW.account_id OR auth.currency <> NEW.currency THEN
        RAISE EXCEPTION 'hold %: on %/%, its authorisation on %/%', NEW.id, NEW.account_id,
            NEW.currency, auth.account_id, auth.currency USING ERRCODE = 'check_violation';
    END IF;
    UPDATE authorizations
       SET hold_state = NEW.state, hold_authorized = NEW.authorized, hold_posted = NEW.posted,
           hold_over_posted = NEW.over_posted, hold_released = NEW.released,
           hold_remaining = NEW.remaining, hold_expires_at = NEW.expires_at,
           hold_created_at = NEW.created_at, hold_updated_at = NEW.updated_at,
           hold_forced = NEW.forced
     WHERE id = NEW.id;
    RETURN NEW;
END $$;

CREATE TRIGGER holds_place INSTEAD OF INSERT ON holds
    FOR EACH ROW EXECUTE FUNCTION hf_place_hold();

-- The hot path writes the hold in the authorisation's own INSERT (a new authorisation) or in the
-- one UPDATE of it (an incremental); otherwise as 0002 (see there for the whole contract).
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
            p_channel, p_now, p_now, 'open', v_approved, 0, 0, 0, v_approved, p_hold_expires,
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
