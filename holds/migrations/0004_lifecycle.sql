-- Lifecycle after the decision: release (reversal), post (clearing, force post), expire, advice,
-- refund; the journal of applied operations; disputes. Each hold operation is one PL/pgSQL call
-- that locks the hold, then the account, checks for a replay of its operation id, then acts.

ALTER TABLE holds ADD COLUMN forced boolean NOT NULL DEFAULT false;
ALTER TABLE authorization_requests DROP CONSTRAINT authorization_requests_kind_check;
ALTER TABLE authorization_requests ADD CONSTRAINT authorization_requests_kind_check
    CHECK (kind IN ('initial', 'incremental', 'advice'));

-- Every lifecycle operation applied from an event, once (op_id = '<provider>:<event id>');
-- append-only. `posted`/`released` are what it did to the hold. (The expiry sweep records its
-- releases on the holds themselves.)
CREATE TABLE ledger_operations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op_id            text NOT NULL UNIQUE,
    kind             text NOT NULL CHECK (kind IN
                         ('release', 'post', 'expire', 'advice', 'refund', 'chargeback',
                          'chargeback_won', 'chargeback_lost')),
    authorization_id text,
    account_id       text NOT NULL REFERENCES accounts (id),
    currency         char(3) NOT NULL,
    requested        bigint NOT NULL CHECK (requested >= 0),
    posted           bigint NOT NULL DEFAULT 0 CHECK (posted >= 0),
    released         bigint NOT NULL DEFAULT 0 CHECK (released >= 0),
    forced           boolean NOT NULL DEFAULT false,
    transaction_id   bigint REFERENCES ledger_transactions (id),
    created_at       timestamptz NOT NULL
);
CREATE INDEX ledger_operations_authorization ON ledger_operations (authorization_id);

CREATE TRIGGER ledger_operations_append_only BEFORE UPDATE OR DELETE ON ledger_operations
    FOR EACH ROW EXECUTE FUNCTION hf_refuse_change();

CREATE TABLE disputes (
    id               text PRIMARY KEY,
    authorization_id text NOT NULL,
    account_id       text NOT NULL REFERENCES accounts (id),
    currency         char(3) NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    state            text NOT NULL CHECK (state IN ('opened', 'provisional_credit', 'won', 'lost')),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- Shared result shape of the hold operations.
--   status: applied | replay | noop (nothing left to act on) | unknown (no such authorisation
--           or card: the caller quarantines) | currency_mismatch
CREATE TYPE hf_op_result AS (
    status text, authorization_id text, account_id text, posted bigint, released bigint,
    remaining bigint, forced boolean, hold_state text
);

CREATE FUNCTION hf_replay(p_op_id text) RETURNS hf_op_result LANGUAGE sql STABLE AS $$
    SELECT ROW('replay', o.authorization_id, o.account_id, o.posted, o.released,
               coalesce(h.remaining, 0), o.forced, h.state)::hf_op_result
      FROM ledger_operations o LEFT JOIN holds h ON h.id = o.authorization_id
     WHERE o.op_id = p_op_id
$$;

-- Reversal: release p_amount (NULL = all that remains) of an authorisation's hold.
CREATE FUNCTION hf_release(p_op_id text, p_authorization_id text, p_amount bigint,
                           p_currency text, p_now timestamptz)
RETURNS hf_op_result LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    auth authorizations%ROWTYPE;
    prior hf_op_result;
    v_release bigint;
BEGIN
    SELECT * INTO h FROM holds WHERE id = p_authorization_id FOR UPDATE;
    SELECT * INTO auth FROM authorizations WHERE id = p_authorization_id;
    IF auth.id IS NULL OR auth.account_id IS NULL THEN
        RETURN ROW('unknown', p_authorization_id, NULL, 0, 0, 0, false, NULL)::hf_op_result;
    END IF;
    PERFORM 1 FROM accounts WHERE id = auth.account_id FOR NO KEY UPDATE;
    prior := hf_replay(p_op_id);
    IF prior.status IS NOT NULL THEN
        RETURN prior;
    END IF;
    IF auth.currency <> p_currency THEN
        RETURN ROW('currency_mismatch', auth.id, auth.account_id, 0, 0, 0, false, h.state)
            ::hf_op_result;
    END IF;
    v_release := CASE WHEN h.state = 'open' THEN least(coalesce(p_amount, h.remaining), h.remaining)
                      ELSE 0 END;
    IF v_release > 0 THEN
        UPDATE holds SET released = released + v_release, remaining = remaining - v_release,
               state = CASE WHEN remaining - v_release = 0 THEN 'closed' ELSE 'open' END,
               updated_at = p_now
         WHERE id = h.id RETURNING * INTO h;
        UPDATE accounts SET held = held - v_release, updated_at = p_now WHERE id = auth.account_id;
    END IF;
    INSERT INTO ledger_operations (op_id, kind, authorization_id, account_id, currency, requested,
                                   released, created_at)
    VALUES (p_op_id, 'release', auth.id, auth.account_id, auth.currency,
            coalesce(p_amount, v_release), v_release, p_now);
    RETURN ROW(CASE WHEN v_release > 0 THEN 'applied' ELSE 'noop' END, auth.id, auth.account_id,
               0, v_release, coalesce(h.remaining, 0), false, h.state)::hf_op_result;
END $$;

-- Clearing: post p_amount against the authorisation's hold (or, with no authorisation, against
-- the card's account: a force post). Within the hold it consumes the hold; above it (tips, fuel),
-- or with no open hold (force post, clearing after expiry), it is still posted and flagged
-- forced. A final clearing releases what remains of the hold.
CREATE FUNCTION hf_post(p_op_id text, p_authorization_id text, p_card_id text, p_amount bigint,
                        p_currency text, p_final boolean, p_now timestamptz)
RETURNS hf_op_result LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    auth authorizations%ROWTYPE;
    prior hf_op_result;
    v_account text;
    v_currency text;
    v_within bigint := 0;
    v_release bigint := 0;
    v_forced boolean;
    v_tx bigint;
BEGIN
    IF p_authorization_id IS NOT NULL THEN
        SELECT * INTO h FROM holds WHERE id = p_authorization_id FOR UPDATE;
        SELECT * INTO auth FROM authorizations WHERE id = p_authorization_id;
        v_account := auth.account_id;
        v_currency := auth.currency;
    ELSE
        SELECT c.account_id, a.currency INTO v_account, v_currency
          FROM cards c JOIN accounts a ON a.id = c.account_id WHERE c.id = p_card_id;
    END IF;
    IF v_account IS NULL THEN
        RETURN ROW('unknown', p_authorization_id, NULL, 0, 0, 0, false, NULL)::hf_op_result;
    END IF;
    PERFORM 1 FROM accounts WHERE id = v_account FOR NO KEY UPDATE;
    prior := hf_replay(p_op_id);
    IF prior.status IS NOT NULL THEN
        RETURN prior;
    END IF;
    IF v_currency <> p_currency THEN
        RETURN ROW('currency_mismatch', p_authorization_id, v_account, 0, 0, 0, false, h.state)
            ::hf_op_result;
    END IF;
    IF h.state = 'open' THEN
        v_within := least(p_amount, h.remaining);
        IF p_final THEN
            v_release := h.remaining - v_within;
        END IF;
    END IF;
    v_forced := v_within < p_amount;
    IF h.id IS NOT NULL THEN
        UPDATE holds
           SET posted = posted + p_amount, over_posted = over_posted + (p_amount - v_within),
               remaining = remaining - v_within - v_release, released = released + v_release,
               state = CASE WHEN state = 'open' AND p_final THEN 'closed' ELSE state END,
               updated_at = p_now
         WHERE id = h.id RETURNING * INTO h;
    END IF;
    IF v_within + v_release > 0 THEN
        UPDATE accounts SET held = held - v_within - v_release, updated_at = p_now
         WHERE id = v_account;
    END IF;
    v_tx := hf_transfer('clearing', 'op:' || p_op_id, NULL, v_account, v_currency, -p_amount,
                        v_forced, p_authorization_id);
    INSERT INTO ledger_operations (op_id, kind, authorization_id, account_id, currency, requested,
                                   posted, released, forced, transaction_id, created_at)
    VALUES (p_op_id, 'post', p_authorization_id, v_account, v_currency, p_amount, p_amount,
            v_release, v_forced, v_tx, p_now);
    RETURN ROW('applied', p_authorization_id, v_account, p_amount, v_release,
               coalesce(h.remaining, 0), v_forced, h.state)::hf_op_result;
END $$;

-- Refund (a credit from the merchant), linked to an authorisation or only to a card.
CREATE FUNCTION hf_refund(p_op_id text, p_authorization_id text, p_card_id text, p_amount bigint,
                          p_currency text, p_now timestamptz)
RETURNS hf_op_result LANGUAGE plpgsql AS $$
DECLARE
    prior hf_op_result;
    v_account text;
    v_currency text;
    v_tx bigint;
BEGIN
    IF p_authorization_id IS NOT NULL THEN
        SELECT account_id, currency INTO v_account, v_currency FROM authorizations
         WHERE id = p_authorization_id;
    ELSE
        SELECT c.account_id, a.currency INTO v_account, v_currency
          FROM cards c JOIN accounts a ON a.id = c.account_id WHERE c.id = p_card_id;
    END IF;
    IF v_account IS NULL THEN
        RETURN ROW('unknown', p_authorization_id, NULL, 0, 0, 0, false, NULL)::hf_op_result;
    END IF;
    PERFORM 1 FROM accounts WHERE id = v_account FOR NO KEY UPDATE;
    prior := hf_replay(p_op_id);
    IF prior.status IS NOT NULL THEN
        RETURN prior;
    END IF;
    IF v_currency <> p_currency THEN
        RETURN ROW('currency_mismatch', p_authorization_id, v_account, 0, 0, 0, false, NULL)
            ::hf_op_result;
    END IF;
    v_tx := hf_transfer('refund', 'op:' || p_op_id, NULL, v_account, v_currency, p_amount, false,
                        p_authorization_id);
    INSERT INTO ledger_operations (op_id, kind, authorization_id, account_id, currency, requested,
                                   transaction_id, created_at)
    VALUES (p_op_id, 'refund', p_authorization_id, v_account, v_currency, p_amount, v_tx, p_now);
    RETURN ROW('applied', p_authorization_id, v_account, 0, 0, 0, false, NULL)::hf_op_result;
END $$;

-- Advice: the network (or the processor standing in for us) approved an authorisation we did
-- not decide; it must be held even if we would have declined. Opens the authorisation with a
-- forced hold, or raises the existing one.
CREATE FUNCTION hf_advice(p_op_id text, p_provider text, p_authorization_id text,
                          p_card_id text, p_amount bigint, p_currency text, p_now timestamptz,
                          p_hold_expires timestamptz)
RETURNS hf_op_result LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    auth authorizations%ROWTYPE;
    card cards%ROWTYPE;
    prior hf_op_result;
    v_currency text;
BEGIN
    SELECT * INTO h FROM holds WHERE id = p_authorization_id FOR UPDATE;
    SELECT * INTO auth FROM authorizations WHERE id = p_authorization_id;
    SELECT * INTO card FROM cards WHERE id = coalesce(auth.card_id, p_card_id);
    IF card.id IS NULL THEN
        RETURN ROW('unknown', p_authorization_id, NULL, 0, 0, 0, false, NULL)::hf_op_result;
    END IF;
    SELECT currency INTO v_currency FROM accounts WHERE id = card.account_id
       FOR NO KEY UPDATE;
    prior := hf_replay(p_op_id);
    IF prior.status IS NOT NULL THEN
        RETURN prior;
    END IF;
    IF v_currency <> p_currency OR (auth.id IS NOT NULL AND h.id IS NOT NULL AND h.state <> 'open')
    THEN
        RETURN ROW(CASE WHEN v_currency <> p_currency THEN 'currency_mismatch' ELSE 'noop' END,
                   p_authorization_id, card.account_id, 0, 0, 0, false, h.state)::hf_op_result;
    END IF;
    IF auth.id IS NULL THEN
        INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency,
            state, requested_amount, approved_amount, created_at, updated_at)
        VALUES (p_authorization_id, p_provider, p_authorization_id, card.id, card.account_id,
            v_currency, 'pending', p_amount, p_amount, p_now, p_now);
    ELSE
        UPDATE authorizations SET requested_amount = requested_amount + p_amount,
               approved_amount = approved_amount + p_amount,
               state = CASE WHEN state = 'declined' THEN 'pending' ELSE state END,
               updated_at = p_now
         WHERE id = auth.id;
    END IF;
    INSERT INTO authorization_requests (provider, provider_id, sequence, authorization_id, kind,
        amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,
        request_hash, decided_at)
    VALUES (p_provider, p_op_id, 0, p_authorization_id, 'advice', p_amount, v_currency, false,
        'approve', p_amount, 'approved', true, p_op_id, p_now);
    IF h.id IS NULL THEN
        INSERT INTO holds (id, account_id, currency, state, authorized, remaining, expires_at,
            created_at, updated_at, forced)
        VALUES (p_authorization_id, card.account_id, v_currency, 'open', p_amount, p_amount,
            p_hold_expires, p_now, p_now, true)
        RETURNING * INTO h;
    ELSE
        UPDATE holds SET authorized = authorized + p_amount, remaining = remaining + p_amount,
               forced = true, updated_at = p_now
         WHERE id = h.id RETURNING * INTO h;
    END IF;
    UPDATE accounts SET held = held + p_amount, updated_at = p_now WHERE id = card.account_id;
    INSERT INTO ledger_operations (op_id, kind, authorization_id, account_id, currency, requested,
                                   forced, created_at)
    VALUES (p_op_id, 'advice', p_authorization_id, card.account_id, v_currency, p_amount, true,
            p_now);
    RETURN ROW('applied', p_authorization_id, card.account_id, 0, 0, h.remaining, true, h.state)
        ::hf_op_result;
END $$;

-- Expiry sweep: release up to p_limit holds past their window, in one transaction.
-- 1. One statement takes the due holds (SKIP LOCKED: a hold being cleared right now is left for
--    the next batch), expires their authorisations and releases them; it touches no account.
-- 2. Only then are the cardholders' accounts locked, in id order, and each updated once, so an
--    authorisation on one of them waits for the tail of a batch, never all of it.
-- Lock order stays hold -> account, as in hf_authorize, hf_post, hf_release. A replayed sweep is
-- harmless: it only ever takes open holds. The hold row itself records the expiry (state,
-- released, updated_at): no journal row per hold, which would cost a third of the sweep.
CREATE FUNCTION hf_expire(p_now timestamptz, p_limit integer)
RETURNS TABLE (holds_expired integer, amount_released bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
    v_accounts text[];
    v_amounts bigint[];
BEGIN
    WITH due AS (
        SELECT h.id, h.account_id, h.remaining FROM holds h
         WHERE h.state = 'open' AND h.expires_at <= p_now
         ORDER BY h.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), auths AS (
        -- the authorisation lifecycle table's expiry row (clearing/lifecycle.py), in bulk
        UPDATE authorizations a SET state = 'expired', updated_at = p_now FROM due d
         WHERE a.id = d.id AND a.state IN ('pending', 'partially_reversed')
    ), released AS (
        UPDATE holds h SET released = h.released + h.remaining, remaining = 0,
               state = 'expired', updated_at = p_now
          FROM due d WHERE h.id = d.id
    ), per_account AS (
        SELECT d.account_id, sum(d.remaining)::bigint AS total FROM due d GROUP BY d.account_id
    )
    SELECT (SELECT count(*) FROM due), array_agg(p.account_id ORDER BY p.account_id),
           array_agg(p.total ORDER BY p.account_id)
      INTO v_count, v_accounts, v_amounts
      FROM per_account p;
    IF v_count = 0 THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;
    PERFORM 1 FROM accounts WHERE id = ANY (v_accounts) ORDER BY id FOR NO KEY UPDATE;
    UPDATE accounts a SET held = a.held - s.total, updated_at = p_now
      FROM unnest(v_accounts, v_amounts) AS s(id, total) WHERE a.id = s.id;
    RETURN QUERY SELECT v_count, (SELECT coalesce(sum(t), 0)::bigint FROM unnest(v_amounts) t);
END $$;
